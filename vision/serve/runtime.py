"""Export directories as the server sees them: a checked spec plus `predict`.

    model = load_served("exports/fmnist_onnx")
    logits, embedding = model.predict(images)   # uint8 [B, H, W, C] -> float32 [B, K], [B, D]
    probs = model.spec.task.probabilities(logits)
    model.spec.task.predictions(probs[0], k=5)  # {"top": [...]}, or per head {"tasks": {...}}
    model.spec.version, model.spec.class_names

Models run through `vision.export.load_exported` (the same loader the export
parity check uses); the server accepts the formats meant for serving, ONNX
(ONNX Runtime) and TFLite (LiteRT). What the outputs mean is the task's
(vision.tasks, from export.json): `logits` are every head's side by side, and
`class_names` those of the answer the prediction log and feedback follow (a
multi-task model's first head).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib

from typing import Any

import numpy as np

from vision import tasks
from vision.export import ExportedModel, load_exported

SERVABLE_FORMATS = ("onnx", "tflite")


class ExportError(ValueError):
  """An export directory that cannot be served; the message names the file and the fix."""


@dataclasses.dataclass(frozen=True)
class ExportSpec:
  """What export.json says about a model."""
  directory: pathlib.Path
  format: str
  version: str
  arch: str
  class_names: tuple[str, ...]
  height: int
  width: int
  channels: int
  int8: bool = False
  # Evaluation resizing (model card): shorter side to resize_size, then the centre crop.
  resize_size: int | None = None
  interpolation: str = "bilinear"
  task: Any = None  # vision.tasks: what the outputs mean


def read_spec(directory: str | pathlib.Path) -> ExportSpec:
  """Reads and checks `directory/export.json`."""
  directory = pathlib.Path(directory)
  path = directory / "export.json"
  if not path.is_file():
    raise ExportError(f"{path} does not exist: --model must be a directory written by "
                      "experiments.export")
  try:
    meta = json.loads(path.read_text())
    shape = meta["input"]
    task = tasks.from_json(meta.get("task"), tuple(str(n) for n in meta["class_names"]))
    spec = ExportSpec(
        directory=directory, format=str(meta["format"]),
        version=str(meta.get("version") or directory.name), arch=str(meta.get("arch", "")),
        class_names=tuple(task.primary[1]), height=int(shape["height"]),
        width=int(shape["width"]), channels=int(shape["channels"]), int8=bool(meta.get("int8")),
        resize_size=_optional_int(meta.get("preprocessing", {}).get("resize_size")),
        interpolation=str(meta.get("preprocessing", {}).get("interpolation", "bilinear")),
        task=task)
    model_file = directory / str(meta["model_file"])
  except (ValueError, KeyError, TypeError) as error:
    raise ExportError(f"{path} is not a valid export.json ({type(error).__name__}: {error})")
  if spec.format not in SERVABLE_FORMATS:
    raise ExportError(f"{path}: format {spec.format!r} is not served; export with "
                      f"--format={' or --format='.join(SERVABLE_FORMATS)}")
  if not model_file.exists():
    raise ExportError(f"{model_file} (model_file in {path}) does not exist")
  return spec


def _optional_int(value) -> int | None:
  return None if value is None else int(value)


@dataclasses.dataclass
class ServedModel:
  """An export directory ready to run."""
  spec: ExportSpec
  exported: ExportedModel

  def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [B, H, W, C] images -> float32 logits [B, K] (every head's) and embeddings [B, D]."""
    outputs = self.exported.predict(np.ascontiguousarray(images, dtype=np.uint8))
    return self.spec.task.join(outputs), outputs["embedding"]

  def primary_probabilities(self, logits: np.ndarray) -> np.ndarray:
    """[B, C] probabilities of the answer that is logged (`spec.class_names`)."""
    return self.spec.task.probabilities(logits)[..., self.spec.task.primary[0]]


def load_served(directory: str | pathlib.Path, threads: int | None = None) -> ServedModel:
  spec = read_spec(directory)
  return ServedModel(spec, load_exported(directory, threads=threads or None))


# Embeddings are stored compactly: float16, and at most this many dimensions (a fixed,
# seeded random projection above it, the same in the server and the drift monitor).
COMPACT_DIMS = 64


def compact_embedding(embedding: np.ndarray) -> np.ndarray:
  """[B, D] float32 -> [B, min(D, 64)] float16; deterministic for a given D."""
  embedding = np.asarray(embedding, np.float32)
  if embedding.shape[-1] > COMPACT_DIMS:
    embedding = embedding @ _projection(embedding.shape[-1])
  return embedding.astype(np.float16)


@functools.lru_cache(maxsize=8)
def _projection(dims: int) -> np.ndarray:
  rng = np.random.default_rng(dims)
  return rng.standard_normal((dims, COMPACT_DIMS)).astype(np.float32) / np.sqrt(COMPACT_DIMS)
