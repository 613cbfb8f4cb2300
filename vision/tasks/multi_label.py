"""Multi-label classification: sigmoid BCE, per-class thresholds tuned on validation.

    task = MultiLabel(("cat", "dog", "outdoor"))
    loss = task.loss(config.train, train_records)      # reads batch['labels'] (multi-hot)
    task = task.fit(lambda: (val_targets, val_probs))  # thresholds: the best F1 per class
    report = task.report(test_targets, test_probs)     # per-class P/R/F1/AP, micro/macro F1, mAP

A dataset prepared from a CSV with `;`-separated labels is multi-label
(`metadata.json: multi_label`); `task.name='auto'` (the default) then picks this
task. During training the validation report uses thresholds of 0.5; the final
report (`eval/test/report.json`, written by `experiments.evaluate` and at the end
of training) uses thresholds tuned on the validation split with the evaluated
checkpoint, saved to `WORKDIR/thresholds.json`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from sklearn import metrics

from vision.data.sources import Dataset, RecordSource
from vision.errors import ConfigError
from vision.evaluate import report as report_lib
from vision.files import write_text_atomically
from vision.tasks import TASKS, Targets
from vision.tasks.classification import OneOutput, top_k
from vision.tasks.labels import LabelSource
from vision.train.losses import LossFn


def bce_loss(label_smoothing: float = 0.0) -> LossFn:
  """Sigmoid binary cross-entropy, mean over classes and batch, against the multi-hot targets.

  The targets are `batch['targets']` when mixup/cutmix mixed them, else `batch['labels']`.
  """
  def loss(logits: jax.Array, batch: dict[str, jax.Array], model=None) -> jax.Array:
    del model
    targets = batch["targets"] if "targets" in batch else batch["labels"]
    targets = targets.astype(jnp.float32)
    if label_smoothing:
      targets = targets * (1 - label_smoothing) + 0.5 * label_smoothing
    return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), targets).mean()
  return loss


def tune_thresholds(targets: np.ndarray, probs: np.ndarray, default: float = 0.5) -> np.ndarray:
  """Per class, the probability threshold with the best F1 on these (validation) predictions."""
  thresholds = np.full(targets.shape[1], default, np.float64)
  for c in range(targets.shape[1]):
    if not 0 < targets[:, c].sum() < len(targets):
      continue  # no positives or no negatives: nothing to tune against
    precision, recall, cuts = metrics.precision_recall_curve(targets[:, c], probs[:, c])
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    thresholds[c] = float(cuts[int(np.argmax(f1[:-1]))])
  return thresholds


def multilabel_report(targets: np.ndarray, probs: np.ndarray, thresholds: np.ndarray,
                      class_names: Sequence[str]) -> dict:
  """Per-class precision/recall/F1/AP at the thresholds; micro/macro F1, mAP, exact match."""
  predicted = probs >= np.asarray(thresholds)[None, :]
  targets = targets.astype(bool)
  per_class = {}
  for c, name in enumerate(class_names):
    p, r, f, _ = metrics.precision_recall_fscore_support(
        targets[:, c], predicted[:, c], average="binary", zero_division=0)
    ap = (float(metrics.average_precision_score(targets[:, c], probs[:, c]))
          if targets[:, c].any() else None)
    per_class[name] = {"precision": float(p), "recall": float(r), "f1": float(f),
                       "average_precision": ap, "support": int(targets[:, c].sum()),
                       "threshold": float(thresholds[c])}
  aps = [v["average_precision"] for v in per_class.values() if v["average_precision"] is not None]
  clipped = np.clip(probs, 1e-7, 1 - 1e-7)
  bce = -(targets * np.log(clipped) + (~targets) * np.log(1 - clipped)).mean()
  return {
      "multi_label": True, "num_examples": int(len(targets)), "class_names": list(class_names),
      "accuracy": float(np.mean(np.all(predicted == targets, axis=1))),  # exact match
      "hamming_loss": float(np.mean(predicted != targets)),
      "loss": float(bce),
      "mAP": float(np.mean(aps)) if aps else None,
      "macro_avg": {"f1": float(metrics.f1_score(targets, predicted, average="macro",
                                                 zero_division=0))},
      "micro_avg": {"f1": float(metrics.f1_score(targets, predicted, average="micro",
                                                 zero_division=0))},
      "per_class": per_class,
  }


def sigmoid(logits):
  """float32 sigmoid; jax in, jax out (traceable), numpy in, numpy out."""
  if isinstance(logits, np.ndarray):
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float32)))
  return jax.nn.sigmoid(logits.astype(jnp.float32))


@dataclasses.dataclass(frozen=True)
class MultiLabel(OneOutput):
  """Independent sigmoids over `class_names`; `thresholds` (tuned on validation) or 0.5 each."""
  class_names: tuple[str, ...]
  thresholds: tuple[float, ...] | None = None
  name = "multi_label"

  # ----------------------------------------------------------------- building
  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, dataset: Dataset) -> "MultiLabel":
    _check_multi_label(dataset, "task.name")
    if config.model.num_classes not in (None, len(dataset.class_names)):
      raise ConfigError(f"config key 'model.num_classes'={config.model.num_classes}: a multi-label "
                        f"model has one output per class of the data ({len(dataset.class_names)})")
    return cls(dataset.class_names)

  @classmethod
  def for_head(cls, head: ml_collections.ConfigDict, dataset: Dataset, source: LabelSource,
               key: str) -> "MultiLabel":
    _check_multi_label(dataset, f"{key}.type")
    if source.spec != "label":
      raise ConfigError(f"config key '{key}.source' is {source.spec!r}; a multi_label head reads "
                        "the dataset's own labels ('label')")
    if head.num_classes not in (None, len(dataset.class_names)):
      raise ConfigError(f"config key '{key}.num_classes'={head.num_classes}: a multi_label head "
                        f"has one output per class of the data ({len(dataset.class_names)})")
    return cls(dataset.class_names)

  @classmethod
  def from_json(cls, fields: dict, class_names: Sequence[str]) -> "MultiLabel":
    thresholds = fields.get("thresholds")
    return cls(tuple(fields.get("class_names") or class_names),
               None if thresholds is None else tuple(thresholds))

  def to_json(self) -> dict:
    return {"name": self.name, "class_names": list(self.class_names),
            "thresholds": None if self.thresholds is None else list(self.thresholds)}

  # ----------------------------------------------------------------- training
  def loss(self, train_config, train_records: RecordSource) -> LossFn:
    del train_records
    return bce_loss(train_config.label_smoothing)

  def best_metric(self, train_config, train_records: RecordSource) -> str:
    """Exact-match accuracy is harsh for multi-label data: the default becomes val/macro_f1."""
    del train_records
    return "val/macro_f1" if train_config.best_metric == "val/accuracy" else train_config.best_metric

  def train_metrics(self, logits: jax.Array, batch: dict) -> dict[str, jax.Array]:
    """Exact match at thresholds of 0.5 (logit 0), like the validation report's."""
    exact = jnp.all((logits > 0) == (batch["labels"] > 0.5), axis=-1)
    return {"train/accuracy": exact.mean()}

  def dense_targets(self, batch: dict) -> jax.Array:
    return batch["labels"].astype(jnp.float32)

  # --------------------------------------------------------------- evaluation
  def probabilities(self, logits):
    return sigmoid(logits)

  def targets(self, batch: dict) -> np.ndarray:
    """Multi-hot targets [B, C] of a host batch."""
    return np.asarray(batch["labels"])

  def fit(self, validation: Callable[[], tuple[Targets, np.ndarray]]) -> "MultiLabel":
    """Thresholds tuned on `validation()`'s (targets, probabilities): the best F1 per class."""
    targets, probs = validation()
    return dataclasses.replace(self, thresholds=tuple(tune_thresholds(targets, probs).tolist()))

  def fitted_state(self) -> dict | None:
    """{class: threshold} (WORKDIR/thresholds.json), or None before `fit`."""
    if self.thresholds is None:
      return None
    return dict(zip(self.class_names, self.thresholds))

  def with_fitted_state(self, state: dict | None) -> "MultiLabel":
    if not state:
      return self
    return dataclasses.replace(self, thresholds=tuple(float(state[n]) for n in self.class_names))

  def _thresholds(self) -> np.ndarray:
    return np.full(self.num_outputs, 0.5) if self.thresholds is None else np.asarray(
        self.thresholds)

  def uncalibrated(self) -> "MultiLabel":
    return self  # no temperature: the thresholds tuned on validation are its calibration

  def calibrate(self, targets: np.ndarray, logits: np.ndarray) -> "MultiLabel":
    del targets, logits
    return self

  def report(self, targets: np.ndarray, probs: np.ndarray,
             raw_probs: np.ndarray | None = None) -> dict:
    del raw_probs  # the same as `probs`: sigmoids have no temperature here
    return multilabel_report(targets, probs, self._thresholds(), self.class_names)

  def write_report(self, report: dict, directory: str | os.PathLike) -> None:
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_text_atomically(directory / report_lib.JSON_FILENAME, json.dumps(report, indent=2))

  def plots(self, directory: str | os.PathLike) -> dict[str, pathlib.Path]:
    del directory
    return {}

  def scalars(self, report: dict, split: str) -> dict[str, float]:
    scalars = {f"{split}/accuracy": report["accuracy"], f"{split}/loss": report["loss"],
               f"{split}/macro_f1": report["macro_avg"]["f1"],
               f"{split}/micro_f1": report["micro_avg"]["f1"]}
    if report["mAP"] is not None:
      scalars[f"{split}/mAP"] = report["mAP"]
    return scalars

  def summary(self, report: dict) -> str:
    text = report_lib.format_summary(report)
    extra = f"micro F1:   {report['micro_avg']['f1']:.4f}"
    if report["mAP"] is not None:
      extra += f"\nmAP:        {report['mAP']:.4f}"
    return text.replace("\nloss:", f"\n{extra}\nloss:", 1)

  # ----------------------------------------------------------------- prediction
  def predictions(self, probs: np.ndarray, k: int) -> dict:
    """{"labels": the classes at or above their threshold, "top": the k most probable}."""
    chosen = np.nonzero(probs >= self._thresholds())[0]
    return {"labels": [self.class_names[i] for i in chosen],
            "top": top_k(probs, self.class_names, min(k, self.num_outputs))}


def _check_multi_label(dataset: Dataset, key: str) -> None:
  if not dataset.multi_label:
    raise ConfigError(f"config key '{key}' asks for multi-label training but the data has one "
                      "label per image (multi-label data: a CSV with ';'-separated labels, "
                      "prepared by experiments.prepare)")


TASKS[MultiLabel.name] = MultiLabel
