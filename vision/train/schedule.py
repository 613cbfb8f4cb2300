"""When things happen in a run, in steps: logging, validation, checkpoints, the end.

    schedule = Schedule.from_config(config.train, num_train_examples=54_000)
    schedule.total_steps, schedule.steps_per_epoch          # 2742, 421 (6.5 epochs, batch 128)
    schedule.is_eval_step(421), schedule.is_checkpoint_step(421)

`train.num_steps` overrides `train.epochs`; validation runs every
`train.eval_every_steps` (default: each epoch) and at the last step, and each
validation is also a checkpoint and a log line.
"""

from __future__ import annotations

import dataclasses
import math

from vision.data import pipeline


@dataclasses.dataclass(frozen=True)
class Schedule:
  """When things happen, in steps."""
  total_steps: int
  steps_per_epoch: int
  log_every: int
  eval_every: int
  checkpoint_every: int | None

  @classmethod
  def from_config(cls, train_config, num_train_examples: int) -> "Schedule":
    steps_per_epoch = pipeline.steps_per_epoch(num_train_examples, train_config.batch_size)
    total = train_config.num_steps or max(1, math.ceil(train_config.epochs * steps_per_epoch))
    return cls(total, steps_per_epoch, min(train_config.log_every_steps, total),
               train_config.eval_every_steps or steps_per_epoch,
               train_config.checkpoint_every_steps)

  def is_eval_step(self, step: int) -> bool:
    return step % self.eval_every == 0 or step == self.total_steps

  def is_log_step(self, step: int) -> bool:
    return step % self.log_every == 0 or self.is_checkpoint_step(step)

  def is_checkpoint_step(self, step: int) -> bool:
    return self.is_eval_step(step) or bool(
        self.checkpoint_every and step % self.checkpoint_every == 0)
