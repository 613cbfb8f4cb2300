"""From a serving function to each format's model file.

    write_stablehlo(serving, out / "model.stablehlo")
    write_saved_model(serving, out / "saved_model")
    write_tflite(out / "saved_model", out / "model.tflite", calibration=None)
    write_onnx(out / "model.tflite", out / "model.onnx")
    made = Intermediates(serving, scratch_dir)   # made.saved_model(), made.tflite(): once each

Routes (each measured to match JAX on this stack, see README "Export"):
  * StableHLO: `jax.export` with a symbolic batch dimension, serialized bytes.
  * SavedModel: `jax2tf` (native serialization) with the weights as
    `tf.Variable`s; signature `serving_default(images) -> {logits, embedding}`.
  * TFLite: `TFLiteConverter.from_saved_model`. int8 is full-integer
    post-training quantization calibrated by a representative dataset of
    training images (uint8 in, float32 out, int8 weights and activations).
  * ONNX: `tf2onnx` from the TFLite file (tf2onnx cannot read jax2tf
    SavedModels: their `XlaCallModule` op has no ONNX handler), with the
    corrections in `vision.export.tf2onnx_fixes`. int8 ONNX
    comes from static quantization of the fp32 ONNX model by ONNX Runtime
    (QDQ, per-channel weights) with the same calibration images.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import pathlib
import tempfile
from typing import Any, Callable, Iterable, Iterator, TypeVar

import jax
import numpy as np

from vision.export import tf2onnx_fixes
from vision.export.serving import INPUT_NAME, ServingFunction

ONNX_OPSET = 17
T = TypeVar("T")
log = logging.getLogger(__name__)


def _symbolic_input(serving: ServingFunction) -> jax.ShapeDtypeStruct:
  height, width, channels = serving.input_shape
  shape = jax.export.symbolic_shape(f"b, {height}, {width}, {channels}")
  return jax.ShapeDtypeStruct(shape, np.uint8)


def write_stablehlo(serving: ServingFunction, path: pathlib.Path) -> None:
  """`jax.export` serialized bytes; load with `jax.export.deserialize(...).call(images)`."""
  exported = jax.export.export(jax.jit(serving.bound()))(_symbolic_input(serving))
  path.write_bytes(exported.serialize())


def write_saved_model(serving: ServingFunction, path: pathlib.Path) -> None:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from jax.experimental import jax2tf  # pylint: disable=import-outside-toplevel

  height, width, channels = serving.input_shape
  converted = jax2tf.convert(serving.apply, polymorphic_shapes=[None, "(b, ...)"],
                             with_gradient=False)
  module = tf.Module()
  module.weights = [tf.Variable(w, trainable=False) for w in serving.weights]

  @tf.function(autograph=False, input_signature=[
      tf.TensorSpec([None, height, width, channels], tf.uint8, name=INPUT_NAME)])
  def serve(images):
    outputs = converted(module.weights, images)
    return {name: tf.identity(outputs[name], name=name) for name in serving.output_names}

  module.serve = serve
  tf.saved_model.save(module, str(path), signatures={"serving_default": serve})


class Intermediates:
  """The SavedModel and fp32 TFLite file that TFLite and ONNX exports are converted from.

  Each is made on first use in `directory` and then reused, so that exporting
  one model to several formats (and precisions) converts it once.
  """

  def __init__(self, serving: ServingFunction, directory: pathlib.Path):
    self._serving, self._directory = serving, pathlib.Path(directory)

  def saved_model(self) -> pathlib.Path:
    path = self._directory / "saved_model"
    if not path.exists():
      write_saved_model(self._serving, path)
    return path

  def tflite(self) -> pathlib.Path:
    """The fp32 TFLite file."""
    path = self._directory / "model.tflite"
    if not path.exists():
      write_tflite(self.saved_model(), path)
    return path


def calibration_batches(images: np.ndarray) -> Iterator[list[np.ndarray]]:
  """The representative dataset TFLite's converter asks for: one image per step."""
  for image in images:
    yield [image[None]]


def run_isolated(what: str, function: Callable[..., T], *args: Any) -> T:
  """`function(*args)` in a fresh child process; a crash of the child raises RuntimeError.

  `what` names the work in that error ("the TFLite int8 converter").

  For converter code that can kill the process (a segmentation fault in the TFLite
  converter's C++ quantizer, seen on EfficientNet-B0), so that the export ends with
  one error line instead of a dead process. `function` must be importable by name.
  """
  spawn = multiprocessing.get_context("spawn")  # no fork of a process running XLA threads
  with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
    try:
      return pool.submit(function, *args).result()
    except concurrent.futures.process.BrokenProcessPool:
      raise RuntimeError(f"{what} crashed: its process died (a fault in its native code, not "
                         "in the model)") from None


def write_tflite(saved_model: pathlib.Path, path: pathlib.Path, *,
                 calibration: np.ndarray | None = None) -> str:
  """fp32, or int8 when `calibration` (uint8 NHWC training images) is given.

  Returns how it was quantized: "none", "full_integer" (every op int8), or
  "integer_with_float_fallback" when some op has no int8 kernel and stays float.
  The int8 conversion runs in a child process (`run_isolated`): its quantizer
  has crashed the whole process.
  """
  if calibration is None:
    return _write_tflite_here(saved_model, path, None)
  return run_isolated("the TFLite int8 converter", _write_tflite_here, saved_model, path,
                      calibration)


def _write_tflite_here(saved_model: pathlib.Path, path: pathlib.Path,
                       calibration: np.ndarray | None) -> str:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  def converter(ops):
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), ["serving_default"])
    if calibration is not None:
      converter.optimizations = [tf.lite.Optimize.DEFAULT]
      converter.representative_dataset = lambda: calibration_batches(calibration)
      converter.target_spec.supported_ops = ops
    return converter

  if calibration is None:
    path.write_bytes(converter(None).convert())
    return "none"
  try:
    path.write_bytes(converter([tf.lite.OpsSet.TFLITE_BUILTINS_INT8]).convert())
    return "full_integer"
  except Exception as error:  # pylint: disable=broad-except  # the converter's errors vary
    log.warning("full-integer conversion failed (%s); keeping float kernels where int8 has none",
                str(error).splitlines()[0] if str(error) else type(error).__name__)
  path.write_bytes(converter([tf.lite.OpsSet.TFLITE_BUILTINS]).convert())
  return "integer_with_float_fallback"


def _name_tensors(model, renames: dict[str, str], output_names: tuple[str, ...]) -> None:
  """Our tensor names, outputs in `output_names` order, and the batch dimension called `batch`."""
  graph = model.graph
  for value in list(graph.input) + list(graph.output) + list(graph.value_info):
    value.name = renames.get(value.name, value.name)
  for node in graph.node:
    node.input[:] = [renames.get(name, name) for name in node.input]
    node.output[:] = [renames.get(name, name) for name in node.output]
  outputs = sorted(graph.output, key=lambda value: output_names.index(value.name))
  del graph.output[:]
  graph.output.extend(outputs)
  for value in list(graph.input) + list(graph.output):
    value.type.tensor_type.shape.dim[0].dim_param = "batch"


def write_onnx(tflite: pathlib.Path, path: pathlib.Path,
               output_names: tuple[str, ...] = ("logits", "embedding")) -> None:
  """tf2onnx from the TFLite file; input `images`, outputs `output_names` in that order."""
  import onnx  # pylint: disable=import-outside-toplevel
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel

  # The TFLite signature maps our names to the converter's tensor names.
  runner = Interpreter(model_path=str(tflite)).get_signature_runner("serving_default")
  renames = {details["name"]: name for name, details in
             {**runner.get_input_details(), **runner.get_output_details()}.items()}
  model = tf2onnx_fixes.tflite_to_onnx(tflite, opset=ONNX_OPSET)
  _name_tensors(model, renames, output_names)
  onnx.checker.check_model(model)
  onnx.save(model, str(path))


def write_onnx_int8(fp32_onnx: pathlib.Path, path: pathlib.Path, calibration: np.ndarray,
                    range_overrides: Callable[[Any], dict] | None = None) -> None:
  """ONNX Runtime static quantization (QDQ, per-channel, int8) calibrated on `calibration`.

  `range_overrides(onnx_model)` may fix some tensors' ranges (ONNX Runtime's
  `TensorQuantOverrides`: a QAT model's learned ranges) instead of calibrating them.
  """
  import onnx  # pylint: disable=import-outside-toplevel
  from onnxruntime import quantization  # pylint: disable=import-outside-toplevel

  class Reader(quantization.CalibrationDataReader):

    def __init__(self, images: Iterable[np.ndarray]):
      self._batches = iter([{INPUT_NAME: image[None]} for image in images])

    def get_next(self):
      return next(self._batches, None)

  with tempfile.TemporaryDirectory() as tmp:
    prepared = pathlib.Path(tmp) / "prepared.onnx"
    quantization.quant_pre_process(str(fp32_onnx), str(prepared), skip_symbolic_shape=True)
    overrides = range_overrides(onnx.load(str(prepared))) if range_overrides else {}
    quantization.quantize_static(
        str(prepared), str(path), Reader(calibration),
        quant_format=quantization.QuantFormat.QDQ, per_channel=True,
        activation_type=quantization.QuantType.QInt8, weight_type=quantization.QuantType.QInt8,
        extra_options={"TensorQuantOverrides": overrides} if overrides else None)


def tree_size(path: pathlib.Path) -> int:
  """Bytes of a file, or of every file under a directory."""
  if path.is_file():
    return path.stat().st_size
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(path) for name in names)
