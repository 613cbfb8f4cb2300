"""Single-label classification: softmax cross-entropy, accuracy, the classification report.

    task = Classification(("cat", "dog"))
    loss = task.loss(config.train, train_records)     # CE / label smoothing / focal / class weights
    probs = task.probabilities(logits)                # softmax, [B, C]
    report = task.report(labels, probs, raw_probs)    # vision.evaluate.report's format + analysis
    task.predictions(probs[0], k=5)                   # {"top": [{"label", "index", "prob"}, ...]}
    task = task.calibrate(val_labels, val_logits)     # temperature scaling, kept in the model card

The default task, today's path: the objective is `vision.train.imbalance.make_loss`
(cross-entropy unless `train.loss`/`train.class_weights` say otherwise), the
best checkpoint is chosen by `val/accuracy` (by `val/macro_f1` on imbalanced
data), and the model exports `logits` and `probabilities`. As a head of a multi-task
model it reads its labels from a `LabelSource` (a mapped or another column).

Its probabilities are `softmax(logits / temperature)`: the temperature (Guo et
al. 2017, vision/evaluate/calibration.py) is fitted on the validation split at
the end of training (and by `experiments.evaluate --fit_temperature`) and
travels in `to_json()`, so the model card, export.json, predict and the server
all apply it; `uncalibrated()` is the same task at temperature 1. The report
adds to vision.evaluate.report's keys `per_class_accuracy`, `calibration`
(ECE before and after the temperature, reliability bins), `most_confused` and
`top_losses` (vision/evaluate/interpret.py).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vision.data.sources import Dataset, RecordSource
from vision.errors import ConfigError
from vision.files import write_atomically
from vision.evaluate import calibration, interpret
from vision.evaluate import report as report_lib
from vision.tasks import TASKS, Targets
from vision.tasks.labels import LabelSource
from vision.train import imbalance
from vision.train.losses import LossFn


def top_k(probs: np.ndarray, class_names: Sequence[str], k: int = 5) -> list[dict]:
  """The `k` most probable classes, most probable first: [{"label", "index", "prob"}, ...]."""
  order = np.argsort(-probs, kind="stable")[:k]
  return [{"label": class_names[i], "index": int(i), "prob": float(probs[i])} for i in order]


def softmax(logits):
  """float32 softmax over the last axis; jax in, jax out (traceable), numpy in, numpy out."""
  if isinstance(logits, np.ndarray):
    shifted = logits.astype(np.float32) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)
  return jax.nn.softmax(logits.astype(jnp.float32))


class OneOutput:
  """What a task with one set of classes exports and logs: `logits`, all of them, and
  `probabilities`, the task's (temperature-scaled softmax, or sigmoids) computed in the graph."""
  class_names: tuple[str, ...]
  uncertainty_weights = 0  # no learned loss weights in the model's head
  output_names = ("logits", "probabilities")

  @property
  def num_outputs(self) -> int:
    return len(self.class_names)

  def outputs(self, logits) -> dict:
    return {"logits": logits, "probabilities": self.probabilities(logits)}

  def sections(self, report: dict) -> list[tuple[str, dict, slice, tuple[str, ...]]]:
    """(name, report, its outputs, class names) per part of the report: one, unnamed."""
    return [("", report, slice(0, self.num_outputs), self.class_names)]

  def join(self, outputs: dict) -> np.ndarray:
    return outputs["logits"]

  @property
  def primary(self) -> tuple[slice, tuple[str, ...]]:
    """The outputs and class names a single answer is about (prediction log, feedback, drift)."""
    return slice(0, self.num_outputs), self.class_names


@dataclasses.dataclass(frozen=True)
class Classification(OneOutput):
  """One softmax over `class_names` at `temperature`; labels from `source` (the dataset's label
  by default)."""
  class_names: tuple[str, ...]
  source: LabelSource = LabelSource()
  temperature: float = 1.0
  name = "classification"

  # ----------------------------------------------------------------- building
  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, dataset: Dataset) -> "Classification":
    """Sized by `model.num_classes`, else by the data's classes (extra outputs named '10', ...)."""
    return cls(_padded(dataset.class_names, config.model.num_classes, "model.num_classes"),
               LabelSource(class_names=dataset.class_names))

  @classmethod
  def for_head(cls, head: ml_collections.ConfigDict, dataset: Dataset, source: LabelSource,
               key: str) -> "Classification":
    return cls(_padded(source.class_names, head.num_classes, f"{key}.num_classes"), source)

  @classmethod
  def from_json(cls, fields: dict, class_names: Sequence[str]) -> "Classification":
    names = tuple(fields.get("class_names") or class_names)
    return cls(names, LabelSource.from_json(fields.get("source") or {}, names),
               float(fields.get("temperature", 1.0)))

  def to_json(self) -> dict:
    return {"name": self.name, "class_names": list(self.class_names),
            "source": self.source.to_json(), "temperature": self.temperature}

  # ----------------------------------------------------------------- training
  def loss(self, train_config, train_records: RecordSource) -> LossFn:
    """`train.loss` / `train.class_weights` / `train.label_smoothing` against this task's labels."""
    inner = imbalance.make_loss(train_config, self._counts(train_records))
    if self.source.key == "label" and self.source.table is None:
      return inner

    def loss(logits: jax.Array, batch: dict, model=None):
      return inner(logits, self.view(batch), model)
    return loss

  def best_metric(self, train_config, train_records: RecordSource) -> str:
    return imbalance.best_metric(train_config, self._counts(train_records))

  def _counts(self, records: RecordSource) -> np.ndarray:
    return imbalance.class_counts(self.source.record_labels(records), self.num_outputs)

  def view(self, batch: dict) -> dict:
    """The batch as this head's loss reads it: its labels under 'label' (soft 'targets' kept)."""
    return {**batch, "label": self.source.labels(batch)}

  def train_metrics(self, logits: jax.Array, batch: dict) -> dict[str, jax.Array]:
    return {"train/accuracy": (logits.argmax(-1) == self.source.labels(batch)).mean()}

  def dense_targets(self, batch: dict) -> jax.Array:
    """One-hot labels [B, C] (what mixup and cutmix mix)."""
    return jax.nn.one_hot(self.source.labels(batch), self.num_outputs, dtype=jnp.float32)

  # --------------------------------------------------------------- evaluation
  def probabilities(self, logits):
    """softmax(logits / temperature), float32 [B, C]."""
    return softmax(logits if self.temperature == 1.0 else logits / self.temperature)

  def uncalibrated(self) -> "Classification":
    """This task at temperature 1 (raw probabilities)."""
    return dataclasses.replace(self, temperature=1.0)

  def calibrate(self, targets: np.ndarray, logits: np.ndarray) -> "Classification":
    """The temperature that minimises the NLL of (validation) `logits` against `targets`."""
    return dataclasses.replace(self, temperature=calibration.fit_temperature(logits, targets))

  def targets(self, batch: dict) -> np.ndarray:
    """int labels [B] of a host batch."""
    return np.asarray(self.source.labels(batch))

  def fit(self, validation: Callable[[], tuple[Targets, np.ndarray]]) -> "Classification":
    del validation  # nothing is tuned on validation data
    return self

  def fitted_state(self) -> dict | None:
    return None

  def with_fitted_state(self, state: dict | None) -> "Classification":
    del state
    return self

  def report(self, targets: np.ndarray, probs: np.ndarray,
             raw_probs: np.ndarray | None = None) -> dict:
    """vision.evaluate.report's report of `probs` plus the error analysis and calibration.

    `raw_probs`: the same predictions at temperature 1 (default: `probs`, right
    when the temperature is 1); `calibration.ece` is theirs, `ece_calibrated` that of `probs`.
    """
    report = report_lib.classification_report(targets, probs, self.class_names)
    confusion = np.asarray(report["confusion_matrix"])
    support = confusion.sum(axis=1)
    report["per_class_accuracy"] = {
        name: (float(confusion[i, i] / support[i]) if support[i] else None)
        for i, name in enumerate(self.class_names)}
    report["calibration"] = calibration.calibration_summary(
        targets, probs if raw_probs is None else raw_probs, probs, self.temperature)
    report["most_confused"] = interpret.most_confused(confusion, self.class_names)
    report["top_losses"] = interpret.top_losses(targets, probs, self.class_names)
    return report

  def write_report(self, report: dict, directory: str | os.PathLike) -> None:
    """report.json, the confusion matrix and the reliability diagram in `directory`."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_atomically(directory / calibration.RELIABILITY_FILENAME,
                     lambda path: calibration.plot_reliability(report["calibration"], path))
    report_lib.write_report(report, directory)

  def plots(self, directory: str | os.PathLike) -> dict[str, pathlib.Path]:
    directory = pathlib.Path(directory)
    return {"confusion_matrix": directory / report_lib.CONFUSION_MATRIX_FILENAME,
            "reliability": directory / calibration.RELIABILITY_FILENAME,
            "top_losses_gallery": directory / interpret.GALLERY_FILENAME}

  def scalars(self, report: dict, split: str) -> dict[str, float]:
    """What metrics.jsonl and W&B get: `{split}/accuracy`, `/loss`, `/macro_f1`, `/top5_accuracy`,
    `/ece` (raw probabilities) and `/ece_calibrated`."""
    scalars = {f"{split}/accuracy": report["accuracy"], f"{split}/loss": report["loss"],
               f"{split}/macro_f1": report["macro_avg"]["f1"]}
    if "calibration" in report:
      scalars[f"{split}/ece"] = report["calibration"]["ece"]
      scalars[f"{split}/ece_calibrated"] = report["calibration"]["ece_calibrated"]
    if "top5_accuracy" in report:
      scalars[f"{split}/top5_accuracy"] = report["top5_accuracy"]
    return scalars

  def summary(self, report: dict) -> str:
    """vision.evaluate.report's summary with the ECE (and the TTA, when one was used)."""
    text = report_lib.format_summary(report)
    extra = []
    if "calibration" in report:
      fit = report["calibration"]
      extra.append(f"ECE:        {fit['ece']:.4f} raw, {fit['ece_calibrated']:.4f} at temperature "
                   f"{fit['temperature']:.4g} (15 bins)")
    if report.get("tta", "none") != "none":
      extra.append(f"TTA:        {report['tta']}")
    return text.replace("\nloss:", "".join(f"\n{line}" for line in extra) + "\nloss:", 1)

  # ----------------------------------------------------------------- prediction
  def predictions(self, probs: np.ndarray, k: int) -> dict:
    return {"top": top_k(probs, self.class_names, min(k, self.num_outputs))}


def _padded(class_names: tuple[str, ...], num_classes: int | None, key: str) -> tuple[str, ...]:
  num_classes = num_classes or len(class_names)
  if num_classes < len(class_names):
    raise ConfigError(f"config key '{key}'={num_classes} is below the data's "
                      f"{len(class_names)} classes")
  return tuple(class_names) + tuple(str(i) for i in range(len(class_names), num_classes))


TASKS[Classification.name] = Classification
