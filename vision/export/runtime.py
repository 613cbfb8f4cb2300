"""Loading an export directory and running it in its own runtime.

    model = load_exported("exports/fmnist_onnx")
    outputs = model.predict(images)        # uint8 [B, H, W, C] → {"logits": ..., "embedding": ...}
    model.info["class_names"], model.info["version"], model.output_names

Each format runs where it would be deployed: SavedModel in TensorFlow, TFLite
in LiteRT (`ai-edge-litert`, the successor of `tf.lite.Interpreter`), ONNX in
ONNX Runtime, StableHLO through `jax.export.deserialize`. The parity check,
the latency benchmark and the server all go through this one loader. The
outputs are those export.json lists (a multi-task model: `logits_HEAD` per
head, then `embedding`).
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Callable

import numpy as np

from vision.export.serving import INPUT_NAME, OUTPUT_NAMES

EXPORT_JSON = "export.json"
FORMATS = ("saved_model", "tflite", "onnx", "stablehlo")
MODEL_FILES = {"saved_model": "saved_model", "tflite": "model.tflite", "onnx": "model.onnx",
               "stablehlo": "model.stablehlo"}

Outputs = dict[str, np.ndarray]


class ExportedModel:
  """An export directory's model, ready to run: `predict(uint8 images) -> outputs`."""

  def __init__(self, directory: str | os.PathLike, *, threads: int | None = None):
    self.directory = pathlib.Path(directory)
    info_path = self.directory / EXPORT_JSON
    if not info_path.exists():
      raise FileNotFoundError(
          f"{info_path} does not exist: --model must be a directory written by experiments.export")
    self.info = json.loads(info_path.read_text())
    self.format = self.info["format"]
    if self.format not in FORMATS:
      raise ValueError(f"{info_path}: unknown format {self.format!r}; known: {', '.join(FORMATS)}")
    spec = self.info["input"]
    self.input_shape = (spec["height"], spec["width"], spec["channels"])
    # A static-batch graph (int8 exports: batch 1) runs larger batches in pieces of its size.
    self.batch_size = spec.get("batch_size")
    self.output_names = tuple(self.info.get("outputs") or OUTPUT_NAMES)
    self._run = _LOADERS[self.format](self.directory / self.info["model_file"], threads,
                                      self.output_names)

  def predict(self, images: np.ndarray) -> Outputs:
    """`{"logits": float32 [B, K], "embedding": float32 [B, D]}` for uint8 [B, H, W, C]
    (one `logits_HEAD` per head instead of `logits` for a multi-task model)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] != self.input_shape:
      raise ValueError(f"expected uint8 images of shape [B, {', '.join(map(str, self.input_shape))}]"
                       f", got {images.dtype} {list(images.shape)}")
    images = np.ascontiguousarray(images)
    if self.batch_size and len(images) > self.batch_size:
      pieces = [self.predict(images[start:start + self.batch_size])
                for start in range(0, len(images), self.batch_size)]
      return {name: np.concatenate([piece[name] for piece in pieces])
              for name in self.output_names}
    outputs = self._run(images)
    return {name: np.asarray(outputs[name], np.float32) for name in self.output_names}


def load_exported(directory: str | os.PathLike, *, threads: int | None = None) -> ExportedModel:
  return ExportedModel(directory, threads=threads)


def _saved_model(path: pathlib.Path, threads: int | None,
                 output_names: tuple[str, ...]) -> Callable[[np.ndarray], Outputs]:
  del output_names  # the signature returns every output by name
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  if threads:
    tf.config.threading.set_intra_op_parallelism_threads(threads)
  serve = tf.saved_model.load(str(path)).signatures["serving_default"]
  return lambda images: {k: v.numpy() for k, v in serve(**{INPUT_NAME: tf.constant(images)}).items()}


class _TFLite:
  """LiteRT's interpreter, resized when the batch size changes (a free batch dimension)."""

  def __init__(self, path: pathlib.Path, threads: int | None, output_names: tuple[str, ...]):
    from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel

    self._interpreter = Interpreter(model_path=str(path), num_threads=threads)
    details = self._interpreter.get_input_details()[0]
    # A static batch dimension (signature != -1) is the size the interpreter already has.
    self._batch = None if details["shape_signature"][0] == -1 else details["shape"][0]
    if self._batch:
      self._interpreter.allocate_tensors()
    runner = self._interpreter.get_signature_runner("serving_default")
    self._input = runner.get_input_details()[INPUT_NAME]["index"]
    self._outputs = {name: runner.get_output_details()[name]["index"] for name in output_names}
    self._output_quant = {name: runner.get_output_details()[name]["quantization"]
                          for name in output_names}

  def __call__(self, images: np.ndarray) -> Outputs:
    if images.shape[0] != self._batch:
      self._interpreter.resize_tensor_input(self._input, images.shape, strict=True)
      self._interpreter.allocate_tensors()
      self._batch = images.shape[0]
    self._interpreter.set_tensor(self._input, images)
    self._interpreter.invoke()
    outputs = {}
    for name, index in self._outputs.items():
      value = self._interpreter.get_tensor(index)
      scale, zero_point = self._output_quant[name]
      if value.dtype != np.float32 and scale:
        value = (value.astype(np.float32) - zero_point) * scale
      outputs[name] = value
    return outputs


def _onnx(path: pathlib.Path, threads: int | None,
          output_names: tuple[str, ...]) -> Callable[[np.ndarray], Outputs]:
  import onnxruntime as ort  # pylint: disable=import-outside-toplevel

  options = ort.SessionOptions()
  if threads:
    options.intra_op_num_threads = options.inter_op_num_threads = threads
  if threads == 1:
    # Idle pool threads otherwise spin for a while after each run, stealing the core the next
    # runtime (or request) needs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
  session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
  return lambda images: dict(zip(output_names, session.run(list(output_names),
                                                           {INPUT_NAME: images})))


def _stablehlo(path: pathlib.Path, threads: int | None,
               output_names: tuple[str, ...]) -> Callable[[np.ndarray], Outputs]:
  del threads, output_names  # XLA:CPU sizes its own thread pool; outputs come by name
  import jax  # pylint: disable=import-outside-toplevel

  exported = jax.export.deserialize(bytearray(path.read_bytes()))
  return jax.jit(exported.call)


_LOADERS = {"saved_model": _saved_model, "tflite": _TFLite, "onnx": _onnx,
            "stablehlo": _stablehlo}
