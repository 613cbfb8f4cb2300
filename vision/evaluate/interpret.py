"""Error analysis of a classification report: top losses and most-confused pairs.

    losses = top_losses(labels, probs, class_names, k=16)    # the worst examples first
    pairs = most_confused(report["confusion_matrix"], class_names)
    describe_examples(losses, records)                       # split index and file of each
    write_gallery(losses, images, gradcam_maps, "eval/test")  # eval/test/top_losses.png

What fastai's `ClassificationInterpretation` shows (`top_losses`,
`most_confused`), as JSON. A top loss is an example with a high cross-entropy
`-log p(true class)`; its `position` is its place among the evaluated examples
until `describe_examples` replaces it with the example's `index` in its split
(and `file`, where the data source reads image files).
"""

from __future__ import annotations

import os
import pathlib
from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np

from vision.data.sources import RecordSource, SubsetSource
from vision.evaluate import saliency
from vision.files import write_atomically

TOP_LOSSES = 16
GALLERY_FILENAME = "top_losses.png"
MOST_CONFUSED = 10
_PROB_FLOOR = 1e-12


def top_losses(labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str],
               k: int = TOP_LOSSES) -> list[dict]:
  """The `k` examples with the highest cross-entropy, highest first.

  Each: {"position", "true", "predicted", "probability" (of the predicted class),
  "true_probability", "loss"}; ties keep the earlier example first.
  """
  labels, probs = np.asarray(labels), np.asarray(probs, np.float64)
  true_probs = probs[np.arange(len(labels)), labels]
  losses = -np.log(np.clip(true_probs, _PROB_FLOOR, None)) + 0.0  # + 0.0: no -0.0
  predicted = probs.argmax(axis=1)
  order = np.argsort(-losses, kind="stable")[:k]
  return [{"position": int(i), "true": class_names[labels[i]],
           "predicted": class_names[predicted[i]], "probability": float(probs[i, predicted[i]]),
           "true_probability": float(true_probs[i]), "loss": float(losses[i])} for i in order]


def most_confused(confusion: Sequence[Sequence[int]], class_names: Sequence[str],
                  limit: int = MOST_CONFUSED, min_count: int = 1) -> list[dict]:
  """Off-diagonal (true, predicted) pairs by count, most frequent first: [{"true", "predicted",
  "count"}]; at most `limit`, each with at least `min_count` examples."""
  counts = np.asarray(confusion, np.int64).copy()
  np.fill_diagonal(counts, 0)
  rows, cols = np.nonzero(counts >= min_count)
  pairs = sorted(zip(-counts[rows, cols], rows, cols))[:limit]
  return [{"true": class_names[r], "predicted": class_names[c], "count": int(-n)}
          for n, r, c in pairs]


def record_file(records: RecordSource, index: int) -> str | None:
  """The image file behind `records[index]`, where the source reads files (else None)."""
  while isinstance(records, SubsetSource):
    index, records = int(records.indices[index]), records.base
  paths = getattr(records, "paths", None)
  return str(paths[index]) if paths else None


def describe_examples(examples: list[dict], evaluated: RecordSource,
                      split: RecordSource | None = None) -> list[dict]:
  """`position` (among `evaluated`) → `index` in `split` (default: `evaluated`), plus `file`.

  `evaluated` is `split` or a subset of it (`data.max_eval_examples`).
  """
  described = []
  for example in examples:
    position = example["position"]
    index = position
    if split is not None and evaluated is not split and isinstance(evaluated, SubsetSource):
      index = int(evaluated.indices[position])
    fields = {k: v for k, v in example.items() if k != "position"}
    file = record_file(evaluated, position)
    described.append({"index": index, **({"file": file} if file else {}), **fields,
                      "position": position})
  return described


def write_gallery(losses: list[dict], images: np.ndarray, maps: np.ndarray | None,
                  directory: str | os.PathLike, columns: int = 4) -> pathlib.Path:
  """DIRECTORY/top_losses.png: each top loss (uint8 `images` [N, S, S, C]) with its true and
  predicted class, probability and loss, beside its saliency overlay when `maps` [N, S, S]."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  panels = 1 if maps is None else 2
  rows = max(1, -(-len(losses) // columns))
  fig = Figure(figsize=(1.9 * columns * panels, 2.3 * rows), dpi=100, layout="constrained")
  FigureCanvasAgg(fig)
  grid = fig.add_gridspec(rows, columns * panels)
  for i, example in enumerate(losses):
    row, column = divmod(i, columns)
    image = images[i] if images[i].shape[-1] != 1 else images[i][..., 0]
    shown = [("", image)]
    if maps is not None:
      shown.append(("Grad-CAM", saliency.overlay(images[i], maps[i])))
    for panel, (label, picture) in enumerate(shown):
      ax = fig.add_subplot(grid[row, column * panels + panel])
      ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if panel == 0:
        ax.set_title(f"#{example['index']} true: {example['true']}\n"
                     f"pred: {example['predicted']} {example['probability']:.2f}\n"
                     f"loss {example['loss']:.2f}", fontsize=7, loc="left")
      else:
        ax.set_title(label, fontsize=7)
  path = directory / GALLERY_FILENAME
  write_atomically(path, lambda tmp: fig.savefig(os.fspath(tmp), format="png"))
  return path
