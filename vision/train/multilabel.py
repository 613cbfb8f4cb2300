"""Multi-label training and evaluation: sigmoid BCE, per-class thresholds tuned on validation.

    loss_fn = bce_loss()                                   # reads batch['labels'] (multi-hot)
    targets, probs = predict_multi_hot(logits_fn, records, spec, batch_size=64, mesh=mesh)
    thresholds = tune_thresholds(val_targets, val_probs)   # max F1 per class
    report = multilabel_report(test_targets, test_probs, thresholds, class_names)

A dataset prepared from a CSV with `;`-separated labels is multi-label
(`metadata.json: multi_label`); training then switches to this objective by
itself. The final report (`eval/test/report.json`) uses the thresholds tuned on
the validation split with the best checkpoint (also in `thresholds.json`).
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn import metrics

from vision import parallel
from vision.data import pipeline
from vision.data.sources import RecordSource
from vision.files import write_text_atomically
from vision.train.losses import LossFn

THRESHOLDS = "thresholds.json"


def bce_loss(label_smoothing: float = 0.0) -> LossFn:
  """Sigmoid binary cross-entropy against multi-hot `batch['labels']`, mean over classes and batch."""
  def loss(logits: jax.Array, batch: dict[str, jax.Array]) -> jax.Array:
    targets = batch["labels"].astype(jnp.float32)
    if label_smoothing:
      targets = targets * (1 - label_smoothing) + 0.5 * label_smoothing
    return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), targets).mean()
  return loss


def predict_multi_hot(logits_fn: Callable[[dict], jax.Array], records: RecordSource,
                      spec: pipeline.ImageSpec, *, batch_size: int, mesh: jax.sharding.Mesh,
                      worker_count: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Multi-hot targets [N, C] and sigmoid probabilities [N, C] for every record of a split."""
  targets, probs = [], []
  for host_batch in pipeline.eval_batches(records, spec, batch_size=batch_size // jax.process_count(),
                                          worker_count=worker_count):
    batch = parallel.to_global(host_batch, mesh)
    batch_probs = parallel.to_host(jax.nn.sigmoid(logits_fn(batch)))
    mask = parallel.to_host(batch["mask"]).astype(bool)
    targets.append(parallel.to_host(batch["labels"])[mask])
    probs.append(batch_probs[mask])
  return np.concatenate(targets), np.concatenate(probs)


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


def write_report(report: dict, workdir: str | os.PathLike, split: str) -> None:
  if parallel.is_main_process():
    directory = pathlib.Path(workdir) / "eval" / split
    directory.mkdir(parents=True, exist_ok=True)
    write_text_atomically(directory / "report.json", json.dumps(report, indent=2))


def split_scalars(report: dict, split: str) -> dict[str, float]:
  scalars = {f"{split}/accuracy": report["accuracy"], f"{split}/loss": report["loss"],
             f"{split}/macro_f1": report["macro_avg"]["f1"],
             f"{split}/micro_f1": report["micro_avg"]["f1"]}
  if report["mAP"] is not None:
    scalars[f"{split}/mAP"] = report["mAP"]
  return scalars


def best_metric(train_config) -> str:
  """Exact-match accuracy is harsh for multi-label data: the default becomes val/macro_f1."""
  return "val/macro_f1" if train_config.best_metric == "val/accuracy" else train_config.best_metric


def compiled_logits(model, mesh: jax.sharding.Mesh) -> Callable[[dict], jax.Array]:
  """A jitted `batch -> float32 logits` for a loaded model (eval mode)."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  graphdef, state = nnx.split(model)
  state = parallel.replicate(state, mesh)

  @jax.jit
  def logits(state, batch):
    return nnx.merge(graphdef, state)(batch["image"]).astype(jnp.float32)
  return lambda batch: logits(state, batch)


def final_report(workdir: str | os.PathLike, val_records: RecordSource,
                 test_records: RecordSource, spec: pipeline.ImageSpec, *, batch_size: int,
                 test_split: str = "test") -> dict:
  """With the best checkpoint: thresholds tuned on validation, then the test report."""
  from vision.checkpoint import load_model  # pylint: disable=import-outside-toplevel
  model, card = load_model(workdir)
  mesh = parallel.make_mesh()
  logits_fn = compiled_logits(model, mesh)
  val_targets, val_probs = predict_multi_hot(logits_fn, val_records, spec, batch_size=batch_size,
                                             mesh=mesh)
  thresholds = tune_thresholds(val_targets, val_probs)
  if parallel.is_main_process():
    write_text_atomically(pathlib.Path(workdir) / THRESHOLDS, json.dumps(
        dict(zip(card.class_names, thresholds.tolist())), indent=2))
  targets, probs = predict_multi_hot(logits_fn, test_records, spec, batch_size=batch_size,
                                     mesh=mesh)
  report = multilabel_report(targets, probs, thresholds, card.class_names)
  write_report(report, workdir, test_split)
  return report
