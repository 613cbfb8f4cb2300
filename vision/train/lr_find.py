"""The learning-rate range test: train with an exponentially growing LR, watch the loss.

    result = find_lr(config, min_lr=1e-5, max_lr=10.0, num_steps=100)
    result.suggested_lr                     # the LR of the smoothed-loss minimum, divided by 10
    result.write("runs/lr_find")            # lr_find.json + lr_find.png

The config's model, data, optimizer (its kind, momentum, weight decay, ...)
and loss are used as in training; only the schedule is replaced by
`min_lr · (max_lr/min_lr)^(step/num_steps)`. The test stops early once the
smoothed loss exceeds 4× its minimum or becomes NaN (Smith, 2015; the fastai
recipe). The suggestion is the classic one: a tenth of the LR at which the
smoothed loss is lowest, which is where the loss still falls fast.
`steepest_lr` (fastest fall) is reported beside it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib

from flax import nnx
import jax
import ml_collections
import numpy as np
import optax

from vision import config as config_lib
from vision import parallel, tasks
from vision.config import ConfigError
from vision.data import open_from_config, pipeline
from vision.files import write_atomically, write_text_atomically
from vision.train import optim
from vision.train.build import build_model
from vision.train.step import Steps

JSON_FILE = "lr_find.json"
PLOT_FILE = "lr_find.png"
SMOOTHING = 0.9
DIVERGED = 4.0


@dataclasses.dataclass
class LRFindResult:
  lrs: list[float]
  losses: list[float]
  smoothed: list[float]
  suggested_lr: float
  min_loss_lr: float
  steepest_lr: float
  stopped_early: bool

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

  def write(self, out_dir: str | os.PathLike) -> dict[str, pathlib.Path]:
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(out_dir / PLOT_FILE, lambda tmp: self.plot(tmp))
    write_text_atomically(out_dir / JSON_FILE, self.to_json())
    return {"json": out_dir / JSON_FILE, "plot": out_dir / PLOT_FILE}

  def plot(self, path: str | os.PathLike) -> None:
    # pylint: disable=import-outside-toplevel
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(6, 4), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    ax.plot(self.lrs, self.losses, color="0.75", lw=1, label="loss")
    ax.plot(self.lrs, self.smoothed, color="tab:blue", lw=2, label="smoothed loss")
    ax.axvline(self.suggested_lr, color="tab:red", ls="--",
               label=f"suggested {self.suggested_lr:.2g}")
    ax.set_xscale("log")
    top = min(max(self.smoothed), 2 * self.smoothed[0]) if self.smoothed else 1
    ax.set_ylim(min(self.smoothed) * 0.9 if self.smoothed else 0, top * 1.05)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    figure.savefig(path, format="png", dpi=100)


def smooth(values: list[float], beta: float = SMOOTHING) -> list[float]:
  """Bias-corrected exponential moving average."""
  average, result = 0.0, []
  for i, value in enumerate(values, start=1):
    average = beta * average + (1 - beta) * value
    result.append(average / (1 - beta ** i))
  return result


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[float, float, float]:
  """(suggested, min-loss, steepest) learning rates from a range test's curve."""
  if len(lrs) < 3:
    raise ConfigError(f"the LR range test ran {len(lrs)} steps, too few to suggest an LR: "
                      "raise --num_steps or lower --min_lr")
  best = int(np.argmin(smoothed))
  slopes = np.gradient(np.asarray(smoothed), np.log(np.asarray(lrs)))
  steepest = int(np.argmin(slopes[:max(best, 1)]))
  return lrs[best] / 10, lrs[best], lrs[steepest]


def find_lr(config: ml_collections.ConfigDict, *, min_lr: float = 1e-5, max_lr: float = 10.0,
            num_steps: int = 100) -> LRFindResult:
  """Runs the range test on `config`'s model, data and optimizer."""
  if not 0 < min_lr < max_lr:
    raise ConfigError(f"--min_lr ({min_lr}) must be > 0 and below --max_lr ({max_lr})")
  if num_steps < 3:
    raise ConfigError(f"--num_steps must be at least 3, got {num_steps}")
  config = config_lib.validate(config)
  dataset, spec = open_from_config(config.data)
  records = pipeline.limit_examples(dataset.split(config.data.train_split),
                                    config.data.max_train_examples)
  task = tasks.from_config(config, dataset)
  model, _ = build_model(config, task, spec)
  schedule = optax.exponential_decay(min_lr, transition_steps=num_steps,
                                     decay_rate=max_lr / min_lr)
  optimizer = nnx.Optimizer(model, optim.make_optimizer(config.optim, schedule), wrt=nnx.Param)
  mesh = parallel.make_mesh()
  steps = Steps.create(model, optimizer, mesh, task=task, loss=task.loss(config.train, records))
  batches = pipeline.train_iterator(records, config.data, spec,
                                    batch_size=config.train.batch_size // jax.process_count(),
                                    seed=config.seed)
  rng = parallel.replicate(jax.random.key(config.seed), mesh)
  state, lrs, raw = steps.state, [], []
  stopped_early = False
  for step in range(num_steps):
    state, metrics = steps.train(state, parallel.to_global(next(batches), mesh), rng)
    loss = float(metrics["train/loss"])
    if not math.isfinite(loss):
      stopped_early = True
      break
    lrs.append(float(schedule(step)))
    raw.append(loss)
    smoothed = smooth(raw)
    if len(raw) > 5 and smoothed[-1] > DIVERGED * min(smoothed):
      stopped_early = True
      break
  smoothed = smooth(raw)
  suggested, min_loss_lr, steepest = suggest(lrs, smoothed)
  return LRFindResult(lrs, raw, smoothed, suggested, min_loss_lr, steepest, stopped_early)
