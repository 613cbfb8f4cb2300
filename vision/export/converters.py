"""From a serving function to each format's model file.

    write_stablehlo(serving, out / "model.stablehlo")
    write_saved_model(serving, out / "saved_model")
    write_tflite(out / "saved_model", out / "model.tflite", calibration=None)
    write_onnx(out / "model.tflite", out / "model.onnx")
    made = Intermediates(serving, scratch_dir)   # made.saved_model(), made.tflite(): once each
    made.tflite(batch_size=1)                    # the static-batch graph int8 is converted from

Routes (each measured to match JAX on this stack, see README "Export"):
  * StableHLO: `jax.export` with a symbolic batch dimension, serialized bytes.
  * SavedModel: `jax2tf` (native serialization) with the weights as
    `tf.Variable`s; signature `serving_default(images) -> {logits, embedding}`.
  * TFLite: `TFLiteConverter.from_saved_model`. int8 is full-integer
    post-training quantization calibrated by a representative dataset of
    training images (uint8 in, float32 out, int8 weights and activations),
    converted from a batch-1 graph (`INT8_BATCH_SIZE`): with static shapes the
    converter fuses each convolution with its bias and activation and keeps
    softmax one op. Under a free batch dimension every bias add and ReLU6 clip
    stays a BROADCAST_TO + ADD/MINIMUM/MAXIMUM that int8 quantizes (and LiteRT
    runs) one by one: MobileNetV2's graph has 84 BROADCAST_TO and 71 clips
    there, none with batch 1.
  * ONNX: `tf2onnx` from the TFLite file (tf2onnx cannot read jax2tf
    SavedModels: their `XlaCallModule` op has no ONNX handler), with the
    corrections in `vision.export.tf2onnx_fixes`. int8 ONNX
    comes from static quantization of the batch-1 fp32 ONNX model by ONNX
    Runtime (QDQ, per-channel 7-bit weights) with the same calibration images.
  * int8 of networks with LayerNorm quantizes only convolutions and matmuls
    (`TFLITE_MATMUL_OPS`, `ONNX_MATMUL_OPS`).
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
# What a "matmuls" int8 model quantizes (`write_tflite`, `write_onnx_int8`): convolutions and
# matrix products, while normalisation, softmax, GELU and residual adds stay float, the int8
# recipe for transformers (ONNX Runtime's transformer quantization, PyTorch's dynamic
# quantization). Full-integer ViT-Ti/16 agreed with JAX on 77% of images, this on 99.7%.
TFLITE_MATMUL_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL")
ONNX_MATMUL_OPS = ("Conv", "MatMul", "Gemm")
# The batch size of int8 TFLite and ONNX graphs (see the module docstring); fp32 graphs take any.
INT8_BATCH_SIZE = 1
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


def write_saved_model(serving: ServingFunction, path: pathlib.Path, *,
                      batch_size: int | None = None) -> None:
  """`serving_default(images)`; images [B, H, W, C] uint8 with B free, or `batch_size`."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from jax.experimental import jax2tf  # pylint: disable=import-outside-toplevel

  height, width, channels = serving.input_shape
  converted = jax2tf.convert(serving.apply,
                             polymorphic_shapes=[None, None if batch_size else "(b, ...)"],
                             with_gradient=False)
  module = tf.Module()
  module.weights = [tf.Variable(w, trainable=False) for w in serving.weights]

  @tf.function(autograph=False, input_signature=[
      tf.TensorSpec([batch_size, height, width, channels], tf.uint8, name=INPUT_NAME)])
  def serve(images):
    outputs = converted(module.weights, images)
    return {name: tf.identity(outputs[name], name=name) for name in serving.output_names}

  module.serve = serve
  tf.saved_model.save(module, str(path), signatures={"serving_default": serve})


class Intermediates:
  """The SavedModel and fp32 TFLite file that TFLite and ONNX exports are converted from.

  Each (free batch, or a static `batch_size`) is made on first use in
  `directory` and then reused, so that exporting one model to several formats
  (and precisions) converts it once.
  """

  def __init__(self, serving: ServingFunction, directory: pathlib.Path):
    self._serving, self._directory = serving, pathlib.Path(directory)

  def saved_model(self, batch_size: int | None = None) -> pathlib.Path:
    path = self._directory / f"saved_model{_batch_suffix(batch_size)}"
    if not path.exists():
      write_saved_model(self._serving, path, batch_size=batch_size)
    return path

  def tflite(self, batch_size: int | None = None) -> pathlib.Path:
    """The fp32 TFLite file."""
    path = self._directory / f"model{_batch_suffix(batch_size)}.tflite"
    if not path.exists():
      write_tflite(self.saved_model(batch_size), path)
    return path


def _batch_suffix(batch_size: int | None) -> str:
  return f"_batch{batch_size}" if batch_size else ""


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
                 calibration: np.ndarray | None = None, matmuls_only: bool = False) -> str:
  """fp32, or int8 when `calibration` (uint8 NHWC training images) is given.

  Returns how it was quantized: "none", "full_integer" (every op int8),
  "integer_with_float_fallback" (ops with no int8 kernel stay float) or
  "matmuls_int8" (only `TFLITE_MATMUL_OPS` are int8): when `matmuls_only`
  (networks with LayerNorm) or when LiteRT cannot run the full-integer model (it
  aborted on an int8 ADD of ViT's and ConvNeXt's graphs). The int8 conversion, and a first run
  of the int8 model in LiteRT, happen in a child process (`run_isolated`): the
  converter's quantizer and LiteRT's int8 kernels have crashed the whole process.
  """
  if calibration is None:
    return _write_tflite_here(saved_model, path, None)
  what = "the TFLite int8 converter (or LiteRT's first run of its model)"
  if not matmuls_only:
    try:
      return run_isolated(what, _write_tflite_here, saved_model, path, calibration)
    except RuntimeError as error:
      log.warning("the full-integer model cannot be made or run (%s); quantizing only its "
                  "convolutions and matrix products", str(error).splitlines()[0])
  return run_isolated(what, _write_tflite_here, saved_model, path, calibration, True)


def _write_tflite_here(saved_model: pathlib.Path, path: pathlib.Path,
                       calibration: np.ndarray | None, matmuls_only: bool = False) -> str:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  def converter(ops=None):
    """fp32 without `ops`; int8 (calibrated) with those op sets."""
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), ["serving_default"])
    if ops is not None:
      converter.optimizations = [tf.lite.Optimize.DEFAULT]
      converter.representative_dataset = lambda: calibration_batches(calibration)
      converter.target_spec.supported_ops = ops
    return converter

  if calibration is None:
    path.write_bytes(converter().convert())
    return "none"
  mixed = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
  if matmuls_only:
    # TFLite's selective quantization: every other builtin op type keeps its float kernel.
    from tensorflow.lite.python import (  # pylint: disable=import-outside-toplevel
        schema_py_generated)
    builtin_ops = {name for name in vars(schema_py_generated.BuiltinOperator)
                   if not name.startswith("_")}
    float_ops = sorted(builtin_ops - set(TFLITE_MATMUL_OPS))
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter(mixed), debug_dataset=lambda: calibration_batches(calibration[:1]),
        debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=float_ops))
    path.write_bytes(debugger.get_nondebug_quantized_model())
    _run_once(path, calibration[:1])
    return "matmuls_int8"
  try:
    path.write_bytes(converter([tf.lite.OpsSet.TFLITE_BUILTINS_INT8]).convert())
    quantization = "full_integer"
  except Exception as error:  # pylint: disable=broad-except  # the converter's errors vary
    log.warning("full-integer conversion failed (%s); keeping float kernels where int8 has none",
                str(error).splitlines()[0] if str(error) else type(error).__name__)
    path.write_bytes(converter(mixed).convert())
    quantization = "integer_with_float_fallback"
  _run_once(path, calibration[:1])
  return quantization


def _run_once(path: pathlib.Path, images: np.ndarray) -> None:
  """Runs the TFLite file on `images` in LiteRT; RuntimeError when LiteRT refuses it."""
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel

  try:
    Interpreter(model_path=str(path)).get_signature_runner("serving_default")(
        **{INPUT_NAME: images})
  except (RuntimeError, ValueError) as error:
    raise RuntimeError(f"LiteRT cannot run the int8 model: {str(error).splitlines()[0]}") from None


def _name_tensors(model, renames: dict[str, str], output_names: tuple[str, ...],
                  free_batch: bool) -> None:
  """Our tensor names, outputs in `output_names` order; a free batch dimension named `batch`."""
  graph = model.graph
  for value in list(graph.input) + list(graph.output) + list(graph.value_info):
    value.name = renames.get(value.name, value.name)
  for node in graph.node:
    node.input[:] = [renames.get(name, name) for name in node.input]
    node.output[:] = [renames.get(name, name) for name in node.output]
  outputs = sorted(graph.output, key=lambda value: output_names.index(value.name))
  del graph.output[:]
  graph.output.extend(outputs)
  if free_batch:
    for value in list(graph.input) + list(graph.output):
      value.type.tensor_type.shape.dim[0].dim_param = "batch"


def write_onnx(tflite: pathlib.Path, path: pathlib.Path,
               output_names: tuple[str, ...] = ("logits", "embedding"), *,
               free_batch: bool = True) -> None:
  """tf2onnx from the TFLite file; input `images`, outputs `output_names` in that order.

  `free_batch=False` for a TFLite file of a static batch size: the ONNX graph keeps it.
  """
  import onnx  # pylint: disable=import-outside-toplevel
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel

  # The TFLite signature maps our names to the converter's tensor names.
  runner = Interpreter(model_path=str(tflite)).get_signature_runner("serving_default")
  renames = {details["name"]: name for name, details in
             {**runner.get_input_details(), **runner.get_output_details()}.items()}
  model = tf2onnx_fixes.tflite_to_onnx(tflite, opset=ONNX_OPSET)
  _name_tensors(model, renames, output_names, free_batch)
  onnx.checker.check_model(model)
  onnx.save(model, str(path))


def write_onnx_int8(fp32_onnx: pathlib.Path, path: pathlib.Path, calibration: np.ndarray,
                    range_overrides: Callable[[Any], dict] | None = None, *,
                    matmuls_only: bool = False) -> None:
  """ONNX Runtime static quantization (QDQ, per-channel, int8) calibrated on `calibration`.

  Weights use 7 of their 8 bits (`reduce_range`): on x86 CPUs without VNNI
  (AVX2, this machine's) ONNX Runtime's int8 kernels multiply with VPMADDUBSW,
  whose 16-bit sums saturate with full-range weights (ONNX Runtime's
  quantization guide). On MobileNetV2 (600 steps, 1,000 validation images) the
  agreement with JAX went from 88.1% to 94.9%.
  `matmuls_only` quantizes only `ONNX_MATMUL_OPS` (networks with LayerNorm).
  `range_overrides(onnx_model)` may fix some tensors' ranges (ONNX Runtime's
  `TensorQuantOverrides`: a QAT model's learned ranges) instead of calibrating
  them; its weights keep all 8 bits, as QAT simulated them.
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
        reduce_range=range_overrides is None,
        op_types_to_quantize=list(ONNX_MATMUL_OPS) if matmuls_only else None,
        extra_options={"TensorQuantOverrides": overrides} if overrides else None)


def tree_size(path: pathlib.Path) -> int:
  """Bytes of a file, or of every file under a directory."""
  if path.is_file():
    return path.stat().st_size
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(path) for name in names)
