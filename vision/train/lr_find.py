"""The learning-rate range test: train with an exponentially growing LR, watch the loss.

    result = find_lr(config, min_lr=1e-5, max_lr=10.0, num_steps=100)
    result.suggested_lr                     # a tenth of the smoothed-loss minimum's LR, or None
    result.conclusive, result.note          # False and why, when the curve shows no minimum
    result.write("runs/lr_find")            # lr_find.json + lr_find.png

The config's model, data, optimizer (its kind, momentum, weight decay, ...)
and loss are used as in training; only the schedule is replaced by
`min_lr · (max_lr/min_lr)^(step/num_steps)`. The test stops early once the
smoothed loss exceeds 4× its minimum or becomes NaN (Smith, 2015; the fastai
recipe). The suggestion is the classic one: a tenth of the LR at which the
smoothed loss is lowest, which is where the loss still falls fast, kept
within the scanned range. `steepest_lr` (fastest fall) is reported beside it
only where the loss does fall. When the loss is lowest at the first LR, or
too few steps ran, there is no minimum to read: the result is inconclusive,
`suggested_lr` is None and `note` says why and what to change.
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


# Fewer recorded steps than this show no curve to read a minimum from.
MIN_STEPS = 10


@dataclasses.dataclass(frozen=True)
class Suggestion:
  """What a range test's curve says; the LRs are None where the curve does not say it."""
  suggested_lr: float | None
  min_loss_lr: float | None
  steepest_lr: float | None
  conclusive: bool
  note: str


@dataclasses.dataclass
class LRFindResult:
  lrs: list[float]
  losses: list[float]
  smoothed: list[float]
  suggested_lr: float | None
  min_loss_lr: float | None
  steepest_lr: float | None
  stopped_early: bool
  conclusive: bool = True
  note: str = ""

  def summary(self) -> str:
    """What experiments.lr_find prints: the suggestion, or why there is none."""
    steps = f"{len(self.lrs)} steps{', stopped early' if self.stopped_early else ''}"
    if not self.conclusive:
      return f"no suggestion: the test was {self.note} ({steps})"
    steepest = (f", falling fastest at {self.steepest_lr:.3g}"
                if self.steepest_lr is not None else "")
    line = (f"suggested learning rate {self.suggested_lr:.3g} (loss lowest at "
            f"{self.min_loss_lr:.3g}{steepest}; {steps})")
    return f"{line}\nnote: {self.note}" if self.note else line

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
    if self.suggested_lr is not None:
      ax.axvline(self.suggested_lr, color="tab:red", ls="--",
                 label=f"suggested {self.suggested_lr:.2g}")
    else:
      ax.set_title("inconclusive: no suggestion (see lr_find.json's note)", fontsize=9)
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


def suggest(lrs: list[float], smoothed: list[float], *, diverged: bool = False) -> Suggestion:
  """What the curve (LR per step, smoothed loss) says: the suggested, lowest-loss and steepest LRs.

  The suggestion is a tenth of the lowest-loss LR, raised to the first LR when that falls
  below it, so it always lies in the scanned range. `diverged` (the test stopped because the
  loss blew up) tells a range that climbs too fast from one with too few steps.
  """
  ran = len(lrs)
  if not ran:
    return Suggestion(None, None, None, False, (
        "inconclusive: the loss was NaN/Inf from the first step: the range starts too high; "
        "lower --min_lr"))
  best = int(np.argmin(smoothed))
  if ran < MIN_STEPS and not diverged:
    return Suggestion(None, lrs[best], None, False, (
        f"inconclusive: too few steps ({ran}) to see the loss fall and turn; raise --num_steps "
        f"to at least {MIN_STEPS} (100 is usual)"))
  if best == 0:
    return Suggestion(None, lrs[0], None, False, (
        f"inconclusive: the loss was lowest at the first LR ({lrs[0]:.3g}) and only rose from "
        f"there: the range starts too high; lower --min_lr (e.g. to {lrs[0] / 1000:.3g})"))
  if ran < MIN_STEPS:
    return Suggestion(None, lrs[best], None, False, (
        f"inconclusive: the loss blew up after {ran} steps: the range climbs too high too "
        "fast to read; lower --max_lr or raise --num_steps"))
  slopes = np.gradient(np.asarray(smoothed, np.float64), np.log(np.asarray(lrs, np.float64)))
  falling = int(np.argmin(slopes[:best + 1]))
  steepest = lrs[falling] if slopes[falling] < 0 else None
  suggested, notes = lrs[best] / 10, []
  if suggested < lrs[0]:
    suggested = lrs[0]
    notes.append("a tenth of the lowest-loss LR lies below --min_lr, so the first LR is "
                 "suggested; lower --min_lr to see more of the curve")
  if best == ran - 1 and not diverged:
    notes.append("the loss was still falling at the last LR; raise --max_lr to see it turn")
  return Suggestion(suggested, lrs[best], steepest, True, "; ".join(notes))


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
  found = suggest(lrs, smoothed, diverged=stopped_early)
  return LRFindResult(lrs, raw, smoothed, found.suggested_lr, found.min_loss_lr,
                      found.steepest_lr, stopped_early, found.conclusive, found.note)
