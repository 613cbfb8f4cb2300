"""Classification report: per-class metrics, a confusion matrix and its plot.

Turns evaluation outputs (integer labels and predicted class probabilities)
into a JSON-serialisable report, writes it to disk together with a
confusion-matrix PNG, and formats a short text summary for the CLI.

Usage:

  from vision.evaluate import report as report_lib

  report = report_lib.classification_report(labels, probs, class_names)
  paths = report_lib.write_report(report, "/tmp/eval")
  print(report_lib.format_summary(report))

The report is a plain dict whose keys are a contract: `num_examples`,
`accuracy`, `top5_accuracy` (only when there are more than 5 classes), `loss`,
`class_names`, `per_class`, `macro_avg`, `weighted_avg` and
`confusion_matrix` (rows are true classes, columns predicted classes).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn import metrics

from vision.files import write_atomically, write_text_atomically

# -log(0) is infinite; clipping keeps the loss finite and JSON-serialisable.
_PROB_FLOOR = 1e-12
_TOP_K = 5
# Beyond this many classes the per-cell counts become unreadable clutter.
_MAX_ANNOTATED_CLASSES = 30

JSON_FILENAME = "report.json"
CONFUSION_MATRIX_FILENAME = "confusion_matrix.png"


def _validate_inputs(
    labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str]
) -> None:
  num_classes = len(class_names)
  if num_classes == 0:
    raise ValueError("class_names must not be empty")
  if len(set(class_names)) != num_classes:
    raise ValueError(f"class_names must be unique, got {list(class_names)}")
  if probs.ndim != 2:
    raise ValueError(f"probs must be 2-D [N, C], got shape {probs.shape}")
  if probs.shape[1] != num_classes:
    raise ValueError(
        f"probs has {probs.shape[1]} columns but there are {num_classes}"
        " class_names"
    )
  if labels.ndim != 1:
    raise ValueError(f"labels must be 1-D [N], got shape {labels.shape}")
  if labels.shape[0] != probs.shape[0]:
    raise ValueError(
        f"labels has {labels.shape[0]} entries but probs has"
        f" {probs.shape[0]} rows"
    )
  if labels.shape[0] == 0:
    raise ValueError("need at least one example, got 0")
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(
        f"labels must be in [0, {num_classes}), got range"
        f" [{labels.min()}, {labels.max()}]"
    )
  if not np.all(np.isfinite(probs)):
    raise ValueError("probs must be finite (no NaN or inf)")


def _mean_cross_entropy(labels: np.ndarray, probs: np.ndarray) -> float:
  true_class_probs = probs[np.arange(labels.shape[0]), labels]
  return float(-np.mean(np.log(np.clip(true_class_probs, _PROB_FLOOR, None))))


def _top_k_accuracy(labels: np.ndarray, probs: np.ndarray, k: int) -> float:
  # A stable sort of -probs breaks ties towards the lower class index, the
  # same rule argmax uses, so top-1 here always agrees with `accuracy`.
  top_k = np.argsort(-probs, axis=1, kind="stable")[:, :k]
  return float(np.mean(np.any(top_k == labels[:, None], axis=1)))


def _averaged_scores(
    labels: np.ndarray, preds: np.ndarray, num_classes: int, average: str
) -> dict[str, float]:
  precision, recall, f1, _ = metrics.precision_recall_fscore_support(
      labels, preds, labels=range(num_classes), average=average,
      zero_division=0,
  )
  return {"precision": float(precision), "recall": float(recall),
          "f1": float(f1)}


def _per_class_scores(
    labels: np.ndarray, preds: np.ndarray, class_names: Sequence[str]
) -> dict[str, dict[str, float | int]]:
  # Passing labels=range(C) keeps classes that never occur, so every class
  # has an entry; zero_division=0 gives them zeros without warnings.
  precision, recall, f1, support = metrics.precision_recall_fscore_support(
      labels, preds, labels=range(len(class_names)), average=None,
      zero_division=0,
  )
  return {
      name: {"precision": float(p), "recall": float(r), "f1": float(f),
             "support": int(s)}
      for name, p, r, f, s in zip(class_names, precision, recall, f1, support)
  }


def classification_report(
    labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
  """Computes accuracy, loss, per-class metrics and the confusion matrix.

  Args:
    labels: int [N], true class indices in [0, C).
    probs: float [N, C]; rows are class probabilities (e.g. a softmax).
    class_names: C unique class names, in class-index order.

  Returns:
    A JSON-serialisable dict (plain Python ints, floats, strs and lists) with
    the keys described in the module docstring.

  Raises:
    ValueError: if the shapes, dtypes or label range are inconsistent.
  """
  labels = np.asarray(labels)
  probs = np.asarray(probs, dtype=np.float64)
  class_names = [str(name) for name in class_names]
  _validate_inputs(labels, probs, class_names)

  num_classes = len(class_names)
  preds = np.argmax(probs, axis=1)
  report: dict[str, Any] = {
      "num_examples": int(labels.shape[0]),
      "accuracy": float(metrics.accuracy_score(labels, preds)),
  }
  # With 5 classes or fewer top-5 accuracy is trivially 1 and misleading.
  if num_classes > _TOP_K:
    report["top5_accuracy"] = _top_k_accuracy(labels, probs, _TOP_K)
  report["loss"] = _mean_cross_entropy(labels, probs)
  report["class_names"] = class_names
  report["per_class"] = _per_class_scores(labels, preds, class_names)
  report["macro_avg"] = _averaged_scores(labels, preds, num_classes, "macro")
  report["weighted_avg"] = _averaged_scores(
      labels, preds, num_classes, "weighted"
  )
  report["confusion_matrix"] = metrics.confusion_matrix(
      labels, preds, labels=range(num_classes)
  ).tolist()
  return report


def _row_normalised_percent(counts: np.ndarray) -> np.ndarray:
  row_totals = counts.sum(axis=1, keepdims=True)
  # Classes absent from the data have an all-zero row; show them as 0%.
  safe_totals = np.where(row_totals == 0, 1, row_totals)
  return 100.0 * counts / safe_totals


def _figure_side_inches(num_classes: int) -> float:
  # Grow with the number of classes so tick labels never overlap.
  return max(6.5, 0.45 * num_classes + 2.5)


def _annotate_counts(ax: Any, counts: np.ndarray, percent: np.ndarray) -> None:
  num_classes = counts.shape[0]
  fontsize = 9 if num_classes <= 15 else 7
  for row in range(num_classes):
    for col in range(num_classes):
      # Light text on dark cells, dark text on light cells.
      color = "white" if percent[row, col] > 50 else "black"
      ax.text(col, row, str(counts[row, col]), ha="center", va="center",
              color=color, fontsize=fontsize)


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]],
    class_names: Sequence[str],
    path: str | os.PathLike,
    title: str = "",
) -> None:
  """Writes a confusion-matrix PNG to `path`.

  Colours are per-row recall percentages (so rare classes are as visible as
  common ones); cells show raw counts unless there are more than 30 classes.

  Args:
    matrix: C x C counts, rows = true class, columns = predicted class.
    class_names: C class names, used for both axes.
    path: output file; always written as PNG whatever its suffix.
    title: optional figure title.
  """
  counts = np.asarray(matrix, dtype=np.int64)
  num_classes = len(class_names)
  if counts.shape != (num_classes, num_classes):
    raise ValueError(
        f"matrix must be {num_classes}x{num_classes} to match class_names,"
        f" got shape {counts.shape}"
    )
  percent = _row_normalised_percent(counts)

  side = _figure_side_inches(num_classes)
  # A bare Figure with an Agg canvas avoids pyplot's global state, which is
  # not thread-safe and needs a display backend.
  fig = Figure(figsize=(side, side), dpi=100, layout="constrained")
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  image = ax.imshow(percent, cmap="Blues", vmin=0, vmax=100,
                    interpolation="nearest")
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
               label="% of true class (recall)")

  tick_fontsize = 10 if num_classes <= 20 else 8
  ticks = np.arange(num_classes)
  ax.set_xticks(ticks, labels=class_names, rotation=45, ha="right",
                rotation_mode="anchor", fontsize=tick_fontsize)
  ax.set_yticks(ticks, labels=class_names, fontsize=tick_fontsize)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  if title:
    ax.set_title(title)
  if num_classes <= _MAX_ANNOTATED_CLASSES:
    _annotate_counts(ax, counts, percent)

  fig.savefig(os.fspath(path), format="png")


def write_report(
    report: dict[str, Any], out_dir: str | os.PathLike
) -> dict[str, pathlib.Path]:
  """Writes `report.json` and `confusion_matrix.png` into `out_dir`.

  Each file is written atomically. The JSON goes last, so its presence means
  the whole report is complete.

  Returns:
    {"json": path to report.json, "confusion_matrix": path to the PNG}.
  """
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  json_path = out_dir / JSON_FILENAME
  png_path = out_dir / CONFUSION_MATRIX_FILENAME

  title = (f"accuracy {report['accuracy']:.2%}"
           f" (n={report['num_examples']})")
  write_atomically(
      png_path,
      lambda tmp: plot_confusion_matrix(
          report["confusion_matrix"], report["class_names"], tmp, title),
  )
  # allow_nan=False: NaN/inf are not valid JSON and would break readers.
  text = json.dumps(report, indent=2, allow_nan=False) + "\n"
  write_text_atomically(json_path, text)
  return {"json": json_path, "confusion_matrix": png_path}


def format_summary(report: dict[str, Any]) -> str:
  """Formats headline metrics and an aligned per-class table as text."""
  lines = [f"examples:   {report['num_examples']}",
           f"accuracy:   {report['accuracy']:.4f}"]
  if "top5_accuracy" in report:
    lines.append(f"top-5 acc:  {report['top5_accuracy']:.4f}")
  lines.append(f"macro F1:   {report['macro_avg']['f1']:.4f}")
  lines.append(f"loss:       {report['loss']:.4f}")
  lines.append("")

  name_width = max(len("class"), *(len(n) for n in report["class_names"]))
  lines.append(f"{'class':<{name_width}}  {'precision':>9}  {'recall':>9}"
               f"  {'f1':>9}  {'support':>9}")
  for name in report["class_names"]:
    scores = report["per_class"][name]
    lines.append(
        f"{name:<{name_width}}  {scores['precision']:>9.4f}"
        f"  {scores['recall']:>9.4f}  {scores['f1']:>9.4f}"
        f"  {scores['support']:>9d}"
    )
  return "\n".join(lines)
