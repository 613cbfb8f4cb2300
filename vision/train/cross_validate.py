"""Stratified K-fold cross-validation, out-of-fold probabilities and label issues (cleanlab).

    summary = cross_validate(config, "runs/cv", folds=5)
    summary["metrics"]["accuracy"]      # {'mean': ..., 'ci95': ..., 'values': [...]}

The training and validation splits are pooled and cut into K stratified folds;
fold k trains on the others (its held-out fold is its validation split, which
picks its best checkpoint) and predicts the held-out fold with that best
checkpoint. The test split is never touched. Writes, under the workdir:
`fold_K/` (an ordinary model directory each; re-running resumes),
`cv_report.json` (each metric's per-fold values, mean and 95% CI, Student t
over the folds), `oof_probs.npz` (paths, labels, out-of-fold probabilities,
label-quality scores) and `label_issues.csv` (path, given_label,
suggested_label, score: cleanlab's likely label errors, most likely first).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import pathlib

import cleanlab.filter
import cleanlab.rank
import ml_collections
import numpy as np
import sklearn.model_selection

from vision import config as config_lib
from vision.comparison import confidence_interval
from vision import parallel, tasks
from vision.checkpoint import load_model
from vision.config import ConfigError
from vision.data import open_from_config
from vision.data.sources import Dataset, RecordSource, SubsetSource, record_labels
from vision.evaluate import evaluate as evaluate_lib
from vision.evaluate import report as report_lib
from vision.evaluate.inference import predict_split
from vision.files import write_atomically, write_text_atomically
from vision.train import loop

log = logging.getLogger("vision")
REPORT, OOF, ISSUES = "cv_report.json", "oof_probs.npz", "label_issues.csv"


class ConcatSource:
  """Several record sources one after the other."""

  def __init__(self, parts: list[RecordSource]):
    self._parts = parts
    self._starts = np.cumsum([0] + [len(p) for p in parts])

  def __len__(self) -> int:
    return int(self._starts[-1])

  @property
  def labels(self) -> np.ndarray:
    return np.concatenate([record_labels(p) for p in self._parts])

  def __getitem__(self, index: int) -> dict:
    part = int(np.searchsorted(self._starts, index, side="right") - 1)
    return self._parts[part][int(index - self._starts[part])]


def _file_paths(records: RecordSource) -> list[str] | None:
  if isinstance(records, SubsetSource):
    inner = _file_paths(records.base)
    return inner and [inner[int(i)] for i in records.indices]
  paths = getattr(records, "paths", None)
  return list(paths) if paths is not None else None


def record_paths(records: RecordSource, split: str) -> list[str]:
  """The source file of each record where known, else `split[position in the split]`."""
  return _file_paths(records) or [f"{split}[{i}]" for i in range(len(records))]


def fold_indices(labels: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
  _, counts = np.unique(labels, return_counts=True)
  if counts.max() < folds:  # scikit-learn's StratifiedKFold raises a ValueError here
    largest = int(counts.max())
    raise ConfigError(f"--folds={folds} is more than the largest class's {largest} examples; "
                      + (f"use --folds={largest} or fewer" if largest >= 2 else
                         "cross-validation needs a class with at least 2"))
  if counts.min() < folds:
    log.warning("a class has %d examples, fewer than %d folds: folds are not fully stratified",
                counts.min(), folds)
  splitter = sklearn.model_selection.StratifiedKFold(folds, shuffle=True, random_state=seed)
  return list(splitter.split(np.zeros(len(labels)), labels))


def cross_validate(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                   folds: int = 5) -> dict:
  """Trains `folds` folds (resuming finished ones) and writes the CV report and label issues."""
  if folds < 2:
    raise ConfigError(f"--folds must be at least 2, got {folds}")
  config = config_lib.validate(config)
  workdir = pathlib.Path(workdir)
  dataset, spec = open_from_config(config.data)
  task = tasks.from_config(config, dataset)
  if task.name != "classification":
    raise ConfigError(f"cross-validation ranks single-label issues; this run's task is {task.name} "
                      "(multi-label data, or task.name): use a single-label classification")
  parts = [config.data.train_split, config.data.val_split]
  pool = ConcatSource([dataset.split(s) for s in parts])
  paths = sum((record_paths(dataset.split(s), s) for s in parts), [])
  labels = record_labels(pool)
  if len(labels) < folds:
    raise ConfigError(f"--folds={folds} is more than the {len(labels)} examples")
  num_classes = len(dataset.class_names)
  oof = np.zeros((len(labels), num_classes), np.float32)
  fold_metrics: list[dict[str, float]] = []
  for fold, (train_idx, held_idx) in enumerate(fold_indices(labels, folds, config.data.split_seed)):
    fold_dir = workdir / f"fold_{fold}"
    log.info("fold %d/%d: %d train, %d held out", fold + 1, folds, len(train_idx), len(held_idx))
    fold_data = Dataset({config.data.train_split: SubsetSource(pool, train_idx),
                         config.data.val_split: SubsetSource(pool, held_idx)},
                        dataset.class_names, dataset.image_size)
    loop.train(config, fold_dir, dataset=fold_data, final_test=False)
    model, card = load_model(fold_dir)
    mesh = parallel.make_mesh()
    held_labels, probs = predict_split(
        evaluate_lib.compiled_predict(model, mesh, task.probabilities), SubsetSource(pool, held_idx),
        evaluate_lib.card_spec(card), mesh=mesh,
        batch_size=evaluate_lib.eval_batch_size(config.train.eval_batch_size))
    oof[held_idx] = probs[:, :num_classes]
    report = report_lib.classification_report(held_labels, probs[:, :num_classes],
                                              dataset.class_names)
    fold_metrics.append({"accuracy": report["accuracy"], "macro_f1": report["macro_avg"]["f1"],
                         "loss": report["loss"]})
  del spec
  summary = _summary(fold_metrics, folds, len(labels))
  if parallel.is_main_process():
    _write_outputs(workdir, summary, paths, labels, oof, dataset.class_names)
  return summary


def _summary(fold_metrics: list[dict[str, float]], folds: int, count: int) -> dict:
  metrics = {}
  for key in fold_metrics[0]:
    values = [m[key] for m in fold_metrics]
    metrics[key] = {"mean": float(np.mean(values)), "ci95": confidence_interval(values),
                    "values": values}
  return {"folds": folds, "num_examples": count, "metrics": metrics}


def label_issues(labels: np.ndarray, oof: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(ranked indices of cleanlab's likely label errors, label-quality score of every example)."""
  scores = cleanlab.rank.get_label_quality_scores(labels, oof)
  ranked = cleanlab.filter.find_label_issues(labels, oof,
                                             return_indices_ranked_by="self_confidence",
                                             n_jobs=1)  # no fork() inside a JAX process
  return np.asarray(ranked, np.int64), scores


def _write_outputs(workdir: pathlib.Path, summary: dict, paths: list[str], labels: np.ndarray,
                   oof: np.ndarray, class_names) -> None:
  ranked, scores = label_issues(labels, oof)
  summary["num_label_issues"] = int(len(ranked))
  write_text_atomically(workdir / REPORT, json.dumps(summary, indent=2))

  def save(tmp: pathlib.Path) -> None:
    with open(tmp, "wb") as handle:
      np.savez(handle, paths=np.array(paths), labels=labels, probs=oof, label_quality=scores)
  write_atomically(workdir / OOF, save)
  rows = [["path", "given_label", "suggested_label", "score"]]
  for i in ranked:
    rows.append([paths[i], class_names[labels[i]], class_names[int(oof[i].argmax())],
                 f"{scores[i]:.6f}"])

  def write(tmp: pathlib.Path) -> None:
    with open(tmp, "w", newline="") as handle:
      csv.writer(handle).writerows(rows)
  write_atomically(workdir / ISSUES, write)


def format_summary(summary: dict) -> str:
  lines = [f"{summary['folds']}-fold cross-validation over {summary['num_examples']} examples:"]
  for key, value in summary["metrics"].items():
    lines.append(f"  {key}: {value['mean']:.4f} ± {value['ci95']:.4f} (95% CI)")
  lines.append(f"  likely label errors: {summary.get('num_label_issues', 0)}")
  return "\n".join(lines)
