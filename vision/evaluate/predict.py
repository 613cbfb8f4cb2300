"""Top-k predictions for image files from a model directory, in the format of its task.

    for line in predict_files("runs/fashion_mnist", ["shoe.png", "bag.jpg"]):
      print(line)   # {"file": "shoe.png", "top": [{"label": "Sneaker", "index": 7, "prob": 0.93}, ...]}

A multi-label model adds `"labels"` (the classes over their tuned thresholds); a
multi-task model answers per head: `{"file": ..., "tasks": {"class": {"top": [...]},
"garment": {"top": [...]}}}`.

Images get the preprocessing the model was trained with (channels, size,
normalisation, from the model card). Probabilities are temperature-scaled with
the card's temperature (`raw_probabilities=True`: without), optionally averaged
over test-time augmentation views (`tta`). A file that cannot be read gives
`{"file": ..., "error": ...}` and the others are still predicted.
"""

from __future__ import annotations

import os
from typing import Iterator, Sequence

import numpy as np

from vision import parallel, tasks
from vision.checkpoint import load_model
from vision.data import pipeline
from vision.data.decode import DecodeError, decode_image
from vision.evaluate import saliency
from vision.evaluate import tta as tta_lib
from vision.evaluate.evaluate import card_spec, compiled_predict

_CHUNK = 32


def model_input(path: str | os.PathLike, spec: pipeline.ImageSpec) -> np.ndarray:
  """An image file as the model sees it: decoded (vision/data/decode.py), sized, channels."""
  return pipeline.prepare_image(decode_image(path), spec)


def predict_files(workdir: str | os.PathLike, paths: Sequence[str], *, k: int = 5,
                  which: str = "best", tta: str = "none",
                  raw_probabilities: bool = False) -> Iterator[dict]:
  """One result per path, in order.

  `tta`: 'none', 'flip' or 'flip_crops' (vision/evaluate/tta.py). The probabilities are
  the calibrated ones (the model card's temperature) unless `raw_probabilities`.
  """
  tta_lib.check_mode(tta)
  model, card = load_model(workdir, which=which)
  task = tasks.load(workdir)
  if raw_probabilities:
    task = task.uncalibrated()
  spec = card_spec(card)
  normalise = pipeline.Normalise(spec)
  predict = compiled_predict(model, parallel.make_mesh(), task.probabilities, tta=tta,
                             fill=saliency.black_baseline(spec))
  for start in range(0, len(paths), _CHUNK):
    chunk = paths[start:start + _CHUNK]
    images, errors = [], {}
    for path in chunk:
      try:
        images.append(model_input(path, spec))
      except DecodeError as error:
        errors[path] = error.reason
    probs = []
    if images:
      batch = pipeline.pad_batch({"image": np.stack(images),
                                  "label": np.zeros(len(images), np.int32)}, _CHUNK)
      probs = list(np.asarray(predict(normalise.map(batch)))[:len(images)])
    for path in chunk:
      if path in errors:
        yield {"file": path, "error": errors[path]}
      else:
        yield {"file": path, **task.predictions(probs.pop(0), k)}
