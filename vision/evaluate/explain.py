"""Saliency maps of image files from a model directory: OUT/<stem>.npy and OUT/<stem>.png.

    for line in explain_files("models/mobilenet_v2", ["chelsea.png"], method="gradcam",
                              out="explained"):
      print(line)  # {"file", "method", "target", "label", "probability", "map", "overlay"}

Each image is decoded and prepared exactly as `predict` prepares it (the model
card's channels, resize and centre crop, normalisation); the map (vision/
evaluate/saliency.py) over the model's input is mapped back onto the file's own
height × width (zero where the centre crop cut the image away) and saved as
float32 in [0, 1] (`OUT/<stem>.npy`), with the photo under it in the 'jet'
colour map (`OUT/<stem>.png`). The target is the predicted class unless
`target` names one (an index, or a class name as the model card spells it; a
multi-task model's are 'HEAD:CLASS'). A file that cannot be read gives
{"file", "error"} and the others are still explained.
"""

from __future__ import annotations

import collections
import difflib
import os
import pathlib
from typing import Iterator, Sequence

from flax import nnx
import jax
import numpy as np
from PIL import Image

from vision import tasks
from vision.checkpoint import load_model
from vision.data import pipeline
from vision.data.decode import DecodeError, decode_image
from vision.errors import ConfigError
from vision.evaluate import saliency
from vision.evaluate.evaluate import card_spec


def resolve_target(target: str | int | None, class_names: Sequence[str]) -> int | None:
  """The output index `target` names (an index or a class name); None stays None."""
  if target is None or target == "":
    return None
  text = str(target)
  if text.lstrip("-").isdigit():
    index = int(text)
    if not 0 <= index < len(class_names):
      raise ConfigError(f"--target={index} is out of range: the model has {len(class_names)} "
                        f"outputs (0..{len(class_names) - 1})")
    return index
  if text in class_names:
    return list(class_names).index(text)
  close = difflib.get_close_matches(text, class_names, n=3)
  hint = f"; did you mean {', '.join(map(repr, close))}?" if close else (
      " (give a class index or a name from the model card's class_names)")
  raise ConfigError(f"--target={text!r} is not a class of this model{hint}")


def _check_stems(paths: Sequence[str]) -> None:
  stems = collections.Counter(pathlib.Path(p).stem for p in paths)
  clashes = sorted(stem for stem, count in stems.items() if count > 1)
  if clashes:
    raise ConfigError(f"several images share the file stem {clashes[0]!r} and would overwrite "
                      "each other's OUT/<stem>.npy: explain them in separate runs or rename them")


def explain_files(workdir: str | os.PathLike, paths: Sequence[str], *, method: str,
                  out: str | os.PathLike, target: str | int | None = None, which: str = "best",
                  steps: int = saliency.IG_STEPS) -> Iterator[dict]:
  """One result per path, in order; writes OUT/<stem>.npy and OUT/<stem>.png for each."""
  if method == "rollout" and target not in (None, ""):
    raise ConfigError("--target does not apply to --method=rollout: attention rollout does not "
                      "depend on the class (use gradcam, gradcam_pp or integrated_gradients)")
  _check_stems(paths)
  model, card = load_model(workdir, which=which)
  task = tasks.load(workdir)
  spec = card_spec(card)
  target_index = resolve_target(target, task.class_names)
  explainer = saliency.Explainer(model, method, steps=steps,
                                 baseline=saliency.black_baseline(spec))
  graphdef, state = nnx.split(model)
  probabilities = jax.jit(lambda state, x: task.probabilities(nnx.merge(graphdef, state)(x)))
  primary, _ = task.primary
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  for path in paths:
    try:
      image = decode_image(path)
    except DecodeError as error:
      yield {"file": path, "error": error.reason}
      continue
    prepared = pipeline.prepare_image(image, spec)
    normalised = pipeline.Normalise(spec).map({"image": prepared[None]})["image"]
    probs = np.asarray(probabilities(state, normalised))[0]
    chosen = target_index if target_index is not None else (
        primary.start + int(np.argmax(probs[primary])))
    small = explainer(normalised, np.asarray([chosen]))[0]
    full = saliency.to_image_frame(small, image.shape[0], image.shape[1], spec)
    stem = pathlib.Path(path).stem
    np.save(out / f"{stem}.npy", full.astype(np.float32))
    Image.fromarray(saliency.overlay(image, full)).save(out / f"{stem}.png")
    yield {"file": path, "method": method, "target": chosen, "label": task.class_names[chosen],
           "probability": float(probs[chosen]), "map": str(out / f"{stem}.npy"),
           "overlay": str(out / f"{stem}.png")}
