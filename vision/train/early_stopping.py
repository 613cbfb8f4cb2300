"""Early stopping: end a run once the validation metric stops improving (Keras/Lightning style).

    stopper = EarlyStopping.resume(config.train, checkpoints, workdir, start_step)
    for step in ...:                          # unless stopper.stopped (a stopped run, re-run)
      ...
      if stopper.update(step, scalars):       # after the step's checkpoint is saved
        break
    stopper.finish(workdir)                   # logs the reason, writes early_stopping.json

`train.early_stopping_patience` is the number of evaluations in a row
without an improvement of more than `train.early_stopping_min_delta` over the
best value so far (of the run's best-checkpoint metric); None turns it off.
The state is rebuilt on resume from `metrics.jsonl` (trimmed to the restored
step), so a stopped run, re-run, stops again at once instead of training on,
and a run killed mid-way counts on from where its checkpoint left it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
from typing import Iterable, Mapping

from vision import logging as logging_lib
from vision import parallel
from vision.files import write_text_atomically

log = logging.getLogger("vision")

STOP_FILE = "early_stopping.json"


@dataclasses.dataclass
class EarlyStopping:
  """The stopping rule and its state: the best value, its step, evaluations since."""
  metric: str
  higher_is_better: bool
  patience: int | None
  min_delta: float = 0.0
  best: float | None = None
  best_step: int | None = None
  evaluations_without_improvement: int = 0
  stopped_step: int | None = None

  @classmethod
  def from_config(cls, train_config, *, metric: str, higher_is_better: bool) -> "EarlyStopping":
    return cls(metric, higher_is_better, train_config.early_stopping_patience,
               float(train_config.early_stopping_min_delta))

  @classmethod
  def resume(cls, train_config, checkpoints, workdir: str | os.PathLike,
             start_step: int) -> "EarlyStopping":
    """The rule for a run's best-checkpoint metric, with the evaluations up to `start_step`
    replayed from its metrics.jsonl (the same on every process: rows past the step are ignored)."""
    stopper = cls.from_config(train_config, metric=checkpoints.best_metric,
                              higher_is_better=checkpoints.higher_is_better)
    if stopper.patience is not None and start_step:
      stopper.replay(logging_lib.read_metrics(workdir), up_to_step=start_step)
      if stopper.stopped:
        log.info("this run stopped early before; not training further")
    return stopper

  @property
  def stopped(self) -> bool:
    return self.stopped_step is not None

  def _improves(self, value: float) -> bool:
    if self.best is None:
      return True
    if self.higher_is_better:
      return value > self.best + self.min_delta
    return value < self.best - self.min_delta

  def update(self, step: int, scalars: Mapping[str, float]) -> bool:
    """Takes one evaluation's scalars; True when the run should stop after `step`."""
    if self.patience is None or self.metric not in scalars or self.stopped:
      return self.stopped
    value = float(scalars[self.metric])
    if self._improves(value):
      self.best, self.best_step, self.evaluations_without_improvement = value, step, 0
    else:
      self.evaluations_without_improvement += 1
    if self.evaluations_without_improvement >= self.patience:
      self.stopped_step = step
    return self.stopped

  def replay(self, rows: Iterable[Mapping], up_to_step: int) -> None:
    """Feeds the logged evaluations of steps <= `up_to_step` (rows of metrics.jsonl)."""
    for row in rows:
      if row.get("step", up_to_step + 1) <= up_to_step:
        self.update(int(row["step"]), row)

  @property
  def reason(self) -> str:
    direction = "risen" if self.higher_is_better else "fallen"
    return (f"early stopping at step {self.stopped_step}: {self.metric} has not {direction} by "
            f"more than {self.min_delta:g} for {self.patience} evaluations "
            f"(train.early_stopping_patience); best {self.best:.4f} at step {self.best_step}; "
            f"the best checkpoint by {self.metric} is tested")

  def finish(self, workdir: str | os.PathLike) -> None:
    """Says why the run stopped (log and early_stopping.json) when it stopped early."""
    if not self.stopped:
      return
    log.info("%s", self.reason)
    if parallel.is_main_process():
      self.write(workdir)

  def write(self, workdir: str | os.PathLike) -> None:
    """Records why and where the run stopped: `workdir/early_stopping.json`."""
    record = {**dataclasses.asdict(self), "reason": self.reason}
    write_text_atomically(pathlib.Path(workdir) / STOP_FILE, json.dumps(record, indent=2) + "\n")

