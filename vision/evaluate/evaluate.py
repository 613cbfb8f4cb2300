"""Evaluating a model directory on a split: report.json, confusion_matrix.png, W&B.

    report = evaluate_workdir("runs/fashion_mnist", split="test")
    report["accuracy"], report["per_class"]["Shirt"]["f1"]

The report lands in `WORKDIR/eval/<split>/`; `split_scalars` gives the few
numbers that go to metrics.jsonl and W&B (`test/accuracy`, `test/macro_f1`...).
"""

from __future__ import annotations

import os
import pathlib

from flax import nnx
import jax
import numpy as np

from vision import config as config_lib
from vision import parallel
from vision.checkpoint import ModelCard, load_model
from vision.data import open_from_config
from vision.data.decode import decode_image
from vision.data.pipeline import ImageSpec, limit_examples
from vision.evaluate import report as report_lib
from vision.evaluate.inference import predict_split
from vision.models import probabilities

EVAL_DIR = "eval"


def split_scalars(report: dict, split: str) -> dict[str, float]:
  scalars = {f"{split}/accuracy": report["accuracy"], f"{split}/loss": report["loss"],
             f"{split}/macro_f1": report["macro_avg"]["f1"]}
  if "top5_accuracy" in report:
    scalars[f"{split}/top5_accuracy"] = report["top5_accuracy"]
  return scalars


def publish(writer, report: dict, split: str, step: int, workdir: str | os.PathLike) -> None:
  """Sends a split's scalars and confusion-matrix plot to a metric writer (W&B, JSONL)."""
  writer.write_scalars(step, split_scalars(report, split))
  writer.write_summary(split_scalars(report, split))
  image_path = pathlib.Path(workdir) / EVAL_DIR / split / report_lib.CONFUSION_MATRIX_FILENAME
  if image_path.exists():
    writer.write_images(step, {f"{split}/confusion_matrix": decode_image(image_path)})


def write_split_report(labels: np.ndarray, probs: np.ndarray, class_names, workdir: str | os.PathLike,
                       split: str) -> dict:
  """Scores the predictions and (on the main process) writes eval/<split>/."""
  report = report_lib.classification_report(labels, probs, class_names)
  if parallel.is_main_process():
    report_lib.write_report(report, pathlib.Path(workdir) / EVAL_DIR / split)
  return report


def card_spec(card: ModelCard) -> ImageSpec:
  return ImageSpec(card.image_size, card.channels, card.mean, card.std, card.resize_size,
                   card.interpolation)


def compiled_predict(model: nnx.Module, mesh: jax.sharding.Mesh):
  """A jitted `batch -> probabilities` for a model in eval mode."""
  graphdef, state = nnx.split(model)
  state = parallel.replicate(state, mesh)

  @jax.jit
  def predict(state, batch):
    return probabilities(nnx.merge(graphdef, state), batch["image"])

  return lambda batch: predict(state, batch)


def eval_batch_size(requested: int) -> int:
  """`requested`, rounded up to a multiple of the device count."""
  devices = jax.device_count()
  return -(-requested // devices) * devices


def predict_workdir(workdir: str | os.PathLike, split: str = "test", *,
                    which: str = "best") -> tuple[np.ndarray, np.ndarray, ModelCard]:
  """Labels [N], probabilities [N, C] and the card of a model directory on `split`."""
  config = config_lib.load_resolved(workdir)
  model, card = load_model(workdir, which=which)
  dataset, _ = open_from_config(config.data)
  if dataset.multi_label:
    raise config_lib.ConfigError(
        f"{workdir} was trained on multi-label data; its report with tuned thresholds is "
        f"{workdir}/eval/test/report.json, written when training ends (this scores single-label "
        "models)")
  records = dataset.split(split)
  records = limit_examples(records, config.data.max_eval_examples)
  mesh = parallel.make_mesh()
  labels, probs = predict_split(
      compiled_predict(model, mesh), records, card_spec(card),
      batch_size=eval_batch_size(config.train.eval_batch_size), mesh=mesh,
      worker_count=config.data.worker_count)
  return labels, probs, card


def evaluate_workdir(workdir: str | os.PathLike, split: str = "test", *,
                     which: str = "best") -> dict:
  """Evaluates the model directory on `split` of the data it was trained on."""
  labels, probs, card = predict_workdir(workdir, split, which=which)
  return write_split_report(labels, probs, card.class_names, workdir, split)
