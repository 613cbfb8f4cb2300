"""Evaluating a model directory on a split: report.json, plots, W&B — for every task.

    report = evaluate_workdir("runs/fashion_mnist", split="test")
    report["accuracy"], report["per_class"]["Shirt"]["f1"]
    report["tasks"]["garment"]["accuracy"]          # a multi-task model: one report per head

The report (the task's format, vision.tasks) lands in `WORKDIR/eval/<split>/`;
`task.scalars` gives the few numbers that go to metrics.jsonl and W&B
(`test/accuracy`, `test/macro_f1`, `test/accuracy/garment`...). A task that
tunes something on validation data first (multi-label thresholds) does so with
the evaluated checkpoint, and saves it to `WORKDIR/thresholds.json`.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Callable

from flax import nnx
import jax
import numpy as np

from vision import config as config_lib
from vision import parallel, tasks
from vision.checkpoint import ModelCard, load_model
from vision.data import open_from_config
from vision.data.decode import decode_image
from vision.data.pipeline import ImageSpec, limit_examples
from vision.evaluate.inference import predict_split

EVAL_DIR = "eval"


def publish(writer, task, report: dict, split: str, step: int,
            workdir: str | os.PathLike) -> dict[str, float]:
  """Sends a split's scalars and plots (confusion matrices) to a metric writer; returns the scalars."""
  scalars = task.scalars(report, split)
  writer.write_scalars(step, scalars)
  writer.write_summary(scalars)
  for key, path in task.plots(pathlib.Path(workdir) / EVAL_DIR / split).items():
    if path.exists():
      writer.write_images(step, {f"{split}/{key}": decode_image(path)})
  return scalars


def write_split_report(task, targets: Any, probs: np.ndarray, workdir: str | os.PathLike,
                       split: str) -> dict:
  """Scores the predictions with `task` and (on the main process) writes eval/<split>/."""
  report = task.report(targets, probs)
  if parallel.is_main_process():
    task.write_report(report, pathlib.Path(workdir) / EVAL_DIR / split)
  return report


def card_spec(card: ModelCard) -> ImageSpec:
  return ImageSpec(card.image_size, card.channels, card.mean, card.std, card.resize_size,
                   card.interpolation)


def compiled_predict(model: nnx.Module, mesh: jax.sharding.Mesh,
                     probabilities: Callable[[jax.Array], jax.Array]):
  """A jitted `batch -> probabilities(logits)` for a model in eval mode (the task's)."""
  graphdef, state = nnx.split(model)
  state = parallel.replicate(state, mesh)

  @jax.jit
  def predict(state, batch):
    return probabilities(nnx.merge(graphdef, state)(batch["image"]))

  return lambda batch: predict(state, batch)


def eval_batch_size(requested: int) -> int:
  """`requested`, rounded up to a multiple of the device count."""
  devices = jax.device_count()
  return -(-requested // devices) * devices


def _split_predictor(workdir: str | os.PathLike, which: str):
  """(task, predict(split) -> (targets, probs), card) for a model directory and its data."""
  config = config_lib.load_resolved(workdir)
  model, card = load_model(workdir, which=which)
  task = tasks.load(workdir)
  dataset, _ = open_from_config(config.data)
  mesh = parallel.make_mesh()
  predict = compiled_predict(model, mesh, task.probabilities)

  def on(split: str):
    records = limit_examples(dataset.split(split), config.data.max_eval_examples)
    return predict_split(predict, records, card_spec(card), mesh=mesh, targets=task.targets,
                         batch_size=eval_batch_size(config.train.eval_batch_size),
                         worker_count=config.data.worker_count)

  # What the task tunes on validation data (multi-label thresholds), with this checkpoint.
  task = task.fit(lambda: on(config.data.val_split))
  if parallel.is_main_process():
    tasks.save_fitted(task, workdir)
  return task, on, card


def predict_workdir(workdir: str | os.PathLike, split: str = "test", *,
                    which: str = "best") -> tuple[Any, np.ndarray, ModelCard]:
  """Targets (the task's), probabilities [N, C] and the card of a model directory on `split`."""
  _, on, card = _split_predictor(workdir, which)
  targets, probs = on(split)
  return targets, probs, card


def evaluate_workdir(workdir: str | os.PathLike, split: str = "test", *,
                     which: str = "best") -> dict:
  """Evaluates the model directory on `split` of the data it was trained on (any task)."""
  task, on, _ = _split_predictor(workdir, which)
  targets, probs = on(split)
  return write_split_report(task, targets, probs, workdir, split)
