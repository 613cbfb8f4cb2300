"""Evaluating a model directory on a split: report.json, plots, report.html, W&B — for every task.

    report = evaluate_workdir("runs/fashion_mnist", split="test")
    report["accuracy"], report["per_class"]["Shirt"]["f1"], report["calibration"]["ece"]
    report = evaluate_workdir("runs/fashion_mnist", tta="flip", fit_temperature=True)
    report["tasks"]["garment"]["accuracy"]          # a multi-task model: one report per head

The report (the task's format, vision.tasks) lands in `WORKDIR/eval/<split>/`
with its plots (confusion matrix, reliability diagram, top-losses gallery with
Grad-CAM overlays for CNNs) and `report.html`, one self-contained page of all
of it; a multi-task model's heads each get their own files in
`eval/<split>/<head>/` and a section of the one page. `task.scalars` gives the
few numbers that go to metrics.jsonl and W&B (`test/accuracy`, `test/ece`,
`test/accuracy/garment`...); `publish` adds the tables and images.

Before scoring, what is fitted on the validation split is fitted with the
evaluated checkpoint: multi-label thresholds always (saved to
`WORKDIR/thresholds.json`), the softmax temperature when `fit_temperature`
(saved in the model card's task: the end of training asks for it,
`experiments.evaluate --fit_temperature` too). `tta` ('none', 'flip',
'flip_crops', vision/evaluate/tta.py) averages the probabilities over views in
the one jitted prediction function.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
from typing import Any, Callable

from flax import nnx
import jax
import ml_collections
import numpy as np

from vision import config as config_lib
from vision import parallel, tasks
from vision.checkpoint import ModelCard, load_model
from vision.data import open_from_config
from vision.data.decode import decode_image
from vision.data.pipeline import ImageSpec, Normalise, limit_examples, read_batch
from vision.data.sources import Dataset, RecordSource
from vision.errors import ConfigError
from vision.evaluate import html_report, interpret, saliency, tta as tta_lib
from vision.evaluate.inference import predict_split

EVAL_DIR = "eval"


def publish(writer, task, report: dict, split: str, step: int,
            workdir: str | os.PathLike) -> dict[str, float]:
  """Sends a split's scalars, plots and tables to a metric writer; returns the scalars."""
  scalars = task.scalars(report, split)
  writer.write_scalars(step, scalars)
  writer.write_summary(scalars)
  for key, path in task.plots(pathlib.Path(workdir) / EVAL_DIR / split).items():
    if path.exists():
      writer.write_images(step, {f"{split}/{key}": decode_image(path)})
  writer.write_tables(step, report_tables(task, report, split))
  return scalars


def report_tables(task, report: dict, split: str) -> dict[str, tuple[list[str], list[list]]]:
  """W&B tables of a report, {key: (columns, rows)}: per class, most confused, top losses."""
  tables = {}
  for name, section, _, class_names in task.sections(report):
    suffix = f"/{name}" if name else ""
    per_class = section.get("per_class", {})
    if per_class:
      columns = ["class"] + list(next(iter(per_class.values())))
      accuracy = section.get("per_class_accuracy")
      if accuracy:
        columns.append("accuracy")
      rows = [[c] + list(per_class[c].values()) + ([accuracy[c]] if accuracy else [])
              for c in class_names]
      tables[f"{split}/per_class{suffix}"] = (columns, rows)
    if "most_confused" in section:  # logged when empty too: no confusions is a result
      tables[f"{split}/most_confused{suffix}"] = (
          ["true", "predicted", "count"],
          [[p["true"], p["predicted"], p["count"]] for p in section["most_confused"]])
    if section.get("top_losses"):
      columns = ["index", "file", "true", "predicted", "probability", "loss"]
      # Reports scored without their records (the linear probe's) have positions, not indices.
      tables[f"{split}/top_losses{suffix}"] = (
          columns, [[e.get("index", e.get("position")), e.get("file", ""), e["true"],
                     e["predicted"], e["probability"], e["loss"]] for e in section["top_losses"]])
  return tables


def write_split_report(task, targets: Any, probs: np.ndarray, workdir: str | os.PathLike,
                       split: str, raw_probs: np.ndarray | None = None) -> dict:
  """Scores the predictions with `task` and (on the main process) writes eval/<split>/."""
  report = task.report(targets, probs, raw_probs)
  if parallel.is_main_process():
    task.write_report(report, pathlib.Path(workdir) / EVAL_DIR / split)
  return report


def card_spec(card: ModelCard) -> ImageSpec:
  return ImageSpec(card.image_size, card.channels, card.mean, card.std, card.resize_size,
                   card.interpolation)


def compiled_predict(model: nnx.Module, mesh: jax.sharding.Mesh,
                     probabilities: Callable[[jax.Array], Any], *, tta: str = "none",
                     fill: np.ndarray | None = None):
  """A jitted `batch -> probabilities(logits)` for a model in eval mode (the task's).

  With `tta` other than 'none', the mean of `probabilities` over the views
  (vision/evaluate/tta.py; `fill` is the normalised black the shifted views are padded with).
  `probabilities` may return a pytree (raw and calibrated probabilities).
  """
  graphdef, state = nnx.split(model)
  state = parallel.replicate(state, mesh)

  @jax.jit
  def predict(state, batch):
    module = nnx.merge(graphdef, state)
    return tta_lib.mean_over_views(module, probabilities, batch["image"], tta, fill)

  return lambda batch: predict(state, batch)


def eval_batch_size(requested: int) -> int:
  """`requested`, rounded up to a multiple of the device count."""
  devices = jax.device_count()
  return -(-requested // devices) * devices


@dataclasses.dataclass
class OpenedModel:
  """A model directory (model in eval mode, card, task) with the data it was trained on."""
  workdir: pathlib.Path
  config: ml_collections.ConfigDict
  model: nnx.Module
  card: ModelCard
  task: Any
  dataset: Dataset
  mesh: jax.sharding.Mesh

  @classmethod
  def open(cls, workdir: str | os.PathLike, which: str = "best") -> "OpenedModel":
    config = config_lib.load_resolved(workdir)
    model, card = load_model(workdir, which=which)
    dataset, _ = open_from_config(config.data)
    return cls(pathlib.Path(workdir), config, model, card, tasks.load(workdir), dataset,
               parallel.make_mesh())

  @property
  def spec(self) -> ImageSpec:
    return card_spec(self.card)

  def records(self, split: str) -> tuple[RecordSource, RecordSource]:
    """(the split, the part of it evaluated: `data.max_eval_examples` of it)."""
    whole = self.dataset.split(split)
    return whole, limit_examples(whole, self.config.data.max_eval_examples)

  def predict(self, split: str, probabilities: Callable, tta: str = "none") -> tuple[Any, Any]:
    """(targets, outputs) over the evaluated part of `split`."""
    predict = compiled_predict(self.model, self.mesh, probabilities, tta=tta,
                               fill=saliency.black_baseline(self.spec))
    return predict_split(predict, self.records(split)[1], self.spec, mesh=self.mesh,
                         targets=self.task.targets,
                         batch_size=eval_batch_size(self.config.train.eval_batch_size),
                         worker_count=self.config.data.worker_count)

  def fit_on_validation(self, *, fit_temperature: bool) -> None:
    """Fits the task on the validation split: the temperature (when asked; written to the
    model card), then the task's own tuning (multi-label thresholds: thresholds.json)."""
    @functools.cache
    def validation_logits():
      return self.predict(self.config.data.val_split, lambda logits: logits)

    if fit_temperature:
      self.task = self.task.calibrate(*validation_logits())
      self.card = dataclasses.replace(self.card, task=self.task.to_json())
      if parallel.is_main_process():
        self.card.write(self.workdir)
    task = self.task
    self.task = task.fit(lambda: (validation_logits()[0],
                                  task.probabilities(np.asarray(validation_logits()[1]))))
    if parallel.is_main_process():
      tasks.save_fitted(self.task, self.workdir)


def _calibrated_and_raw(task) -> Callable[[jax.Array], dict[str, jax.Array]]:
  raw = task.uncalibrated()
  return lambda logits: {"probs": task.probabilities(logits),
                         "raw_probs": raw.probabilities(logits)}


def predict_workdir(workdir: str | os.PathLike, split: str = "test", *, which: str = "best",
                    tta: str = "none") -> tuple[Any, np.ndarray, ModelCard]:
  """Targets (the task's), probabilities [N, C] and the card of a model directory on `split`."""
  opened = OpenedModel.open(workdir, which)
  opened.fit_on_validation(fit_temperature=False)
  targets, probs = opened.predict(split, opened.task.probabilities, tta_lib.check_mode(tta))
  return targets, probs, opened.card


def evaluate_workdir(workdir: str | os.PathLike, split: str = "test", *, which: str = "best",
                     tta: str = "none", fit_temperature: bool = False) -> dict:
  """Evaluates the model directory on `split` of the data it was trained on (any task).

  Writes eval/<split>/ (report.json, plots, report.html) on the main process.
  """
  tta_lib.check_mode(tta)
  opened = OpenedModel.open(workdir, which)
  opened.fit_on_validation(fit_temperature=fit_temperature)
  task = opened.task
  targets, outputs = opened.predict(split, _calibrated_and_raw(task), tta)
  report = task.report(targets, outputs["probs"], outputs["raw_probs"])
  report["tta"] = tta
  whole, evaluated = opened.records(split)
  for _, section, _, _ in task.sections(report):
    section["tta"] = tta
    if "top_losses" in section:
      section["top_losses"] = interpret.describe_examples(section["top_losses"], evaluated, whole)
  if parallel.is_main_process():
    directory = pathlib.Path(workdir) / EVAL_DIR / split
    task.write_report(report, directory)
    _write_galleries(opened, report, evaluated, directory)
    html_report.write_html(task, report, directory, title=f"{pathlib.Path(workdir).name}: "
                           f"{split} split ({report['num_examples']} examples)")
  return report


def _write_galleries(opened: OpenedModel, report: dict, evaluated: RecordSource,
                     directory: pathlib.Path) -> None:
  """The top-losses gallery of every section that has top losses, with Grad-CAM for CNNs."""
  spec = opened.spec
  explainer = saliency.Explainer(opened.model, "gradcam")
  for name, section, outputs, class_names in opened.task.sections(report):
    losses = section.get("top_losses")
    if not losses:
      continue
    images, _ = read_batch(evaluated, np.asarray([e["position"] for e in losses]), spec)
    targets = np.asarray([outputs.start + class_names.index(e["predicted"]) for e in losses])
    normalised = Normalise(spec).map({"image": images})["image"]
    try:
      maps = explainer(normalised, targets)
    except ConfigError:
      maps = None  # no convolutional stage (a ViT): the gallery shows the images alone
    interpret.write_gallery(losses, images, maps, directory / name if name else directory)
