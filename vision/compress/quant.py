"""Quantization-aware training with Qwix: int8 simulated in training, ranges learned for export.

    model = quant.quantize(model, mode="qat", weight_bits=8, activation_bits=8,
                           input_shape=(28, 28, 1))
    model(images)                   # fake-quantized forward: int8 weights and activations
    quant.activation_ranges(model)  # [(kernel, (min, max)), ...] of each conv/dense input

Qwix (google/qwix, the JAX team's quantization library; its `OdmlQatProvider`,
made for LiteRT/TFLite int8) intercepts the ops inside the model's `__call__`:
the weights of every convolution and dense layer are fake-quantized per output
channel (symmetric), and the activations an int8 graph holds (the tensor
entering each conv/dense layer, pooled tensors, the logits) per tensor
(asymmetric) with a *static* range: the running mean of per-batch min and max,
kept in `QuantStat` variables, which are part of the model state and so of
every checkpoint. Gradients pass straight through (STE).

The model keeps its class, parameters and `features`/`head` contract; only its
`__call__` is intercepted, so `model(x)` is the simulated-int8 forward pass and
`float_model(model)` the same weights in float. `eval()` freezes the ranges
(evaluation batches never move them), `train()` lets training update them.

`mode="ptq"` trains in float and marks the model for post-training int8 export
(ranges calibrated on training images at export time).
"""

from __future__ import annotations

from typing import Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import qwix
from qwix._src.utils import flax_util as _qwix_flax_util

from vision.models import layers

MODES = ("none", "qat", "ptq")
BITS = (4, 8)


def _check_shape_ignoring_sharding(value, init_fn) -> None:
  """Qwix 0.1.8's QuantStat check compares shardings too, and under an explicit-axes mesh
  (ours) a scalar's sharding differs between a restored value and a fresh one; shapes and
  dtypes are what it means to check."""
  def abstract(tree):
    return jax.tree.map(lambda x: (x.shape, x.dtype), jax.eval_shape(lambda: tree))
  expected = _qwix_flax_util.unbox(init_fn())
  if abstract(dict(value)) != abstract(dict(expected)):
    raise ValueError(f"QuantStat {abstract(dict(value))} does not match {abstract(dict(expected))}")


_qwix_flax_util._check_shape = _check_shape_ignoring_sharding  # pylint: disable=protected-access


def _qtype(bits: int) -> str:
  if bits not in BITS:
    raise ValueError(f"{bits}-bit quantization is not supported; choose one of {BITS}")
  return f"int{bits}"


def rules(weight_bits: int = 8, activation_bits: int = 8) -> list[qwix.QuantizationRule]:
  """One rule for every layer: per-channel weights, static-range activations."""
  return [qwix.QuantizationRule(module_path=".*", weight_qtype=_qtype(weight_bits),
                                act_qtype=_qtype(activation_bits))]


def _with_range_modes(cls: type) -> type:
  """`cls` whose eval() freezes the activation ranges and train() lets them learn."""

  def eval_(self, **attributes):
    return super(subclass, self).eval(disable_quant_stats_update=True, **attributes)

  def train(self, **attributes):
    return super(subclass, self).train(disable_quant_stats_update=False, **attributes)

  subclass = type(cls.__name__, (cls,), {"eval": eval_, "train": train})
  return subclass


def is_quantized(model: nnx.Module) -> bool:
  return hasattr(type(model), "_unquantized_type")


def quantize(model: nnx.Module, *, mode: str, weight_bits: int = 8, activation_bits: int = 8,
             input_shape: Sequence[int]) -> nnx.Module:
  """A QAT copy of `model` for mode 'qat' (training mode kept); `model` itself otherwise.

  `input_shape` is one image's (H, W, C): Qwix runs the model once to create its state.
  For 'qat', `model` itself is changed too: its convolutions lose their backward
  barriers (`layers.set_materialise_backward`), which the copy inherits, and it
  ends in training mode. Callers replace it with the copy.
  """
  if mode != "qat":
    return model
  model.eval()  # the initialising call must not move BatchNorm statistics
  # ODML's provider (LiteRT's tensor-centric int8: the tensors entering each conv/dense
  # layer and the logits, as the exported int8 graph holds them) keeps its fake quantization
  # outside custom VJPs; QtProvider's static ranges update inside conv_general_qt's custom
  # VJP forward, which flax NNX refuses under nnx.value_and_grad (TraceContextError).
  provider = qwix.OdmlQatProvider(rules(weight_bits, activation_bits), strict=False)
  # The same reason: plain lax convolutions, not `layers.lax_conv`'s custom VJP.
  layers.set_materialise_backward(model, False)
  sample = jnp.zeros((1, *input_shape), jnp.float32)
  # Qwix creates its state by calling the model once; run eagerly, each of the many small
  # fake-quantization ops compiles on its own (75 s for the tiny test CNN, 10 s compiled).
  quantized = qwix.quantize_model(model, provider, sample, skip_nnx_init=True)
  quantized.__class__ = _with_range_modes(type(quantized))
  forward = nnx.jit(lambda module, images: module(images))
  quantized.eval()  # range updates off for the initialising calls
  forward(quantized, sample)
  # Ops that run in training only (dropout's rescaling) create their QuantStats on the first
  # training-mode call, which inside the jitted step would change the state's structure: make
  # them now, with range updates off and every other variable (BatchNorm, RNG) put back.
  snapshot = nnx.clone(quantized)
  quantized.train()
  quantized.set_attributes(disable_quant_stats_update=True)
  forward(quantized, sample)
  nnx.update(quantized, nnx.state(snapshot))
  quantized.set_attributes(qwix_rngs=None)
  model.train()
  quantized.train()
  return quantized


def from_card(model: nnx.Module, quantization: dict | None,
              input_shape: Sequence[int]) -> nnx.Module:
  """Re-applies a model card's `quantization` entry (None or mode 'none'/'ptq': unchanged)."""
  if not quantization:
    return model
  return quantize(model, mode=quantization["mode"], weight_bits=quantization["weight_bits"],
                  activation_bits=quantization["activation_bits"], input_shape=input_shape)


def card_entry(quant_config) -> dict | None:
  """What a model card records about `config.quant` (None when off)."""
  if quant_config.mode == "none":
    return None
  return {"mode": quant_config.mode, "weight_bits": quant_config.weight_bits,
          "activation_bits": quant_config.activation_bits}


def float_model(model: nnx.Module) -> nnx.Module:
  """The same weights without fake quantization (a view sharing `model`'s state)."""
  if not is_quantized(model):
    return model
  graphdef, state = nnx.split(model)
  plain = nnx.merge(graphdef, state)
  plain.__class__ = type(model)._unquantized_type  # pylint: disable=protected-access
  return plain


def activation_ranges(model: nnx.Module) -> list[tuple[np.ndarray, tuple[float, float]]]:
  """(kernel, (min, max)) for each quantized conv/dense layer: the range of its input.

  The range is the running mean of per-batch min and max that QAT learned.
  """
  ranges = []
  for _, module in nnx.iter_graph(model):
    if not isinstance(module, (nnx.Conv, nnx.Linear)):
      continue
    stats = [v for name, v in vars(module).items()
             if isinstance(v, qwix.QuantStat) and name.endswith("_lhs")]
    if len(stats) != 1:
      continue
    value = stats[0].get_value()
    count = float(value["count"])
    if count == 0:
      continue
    ranges.append((np.asarray(module.kernel[...]),
                   (float(np.min(value["sum_of_min"])) / count,
                    float(np.max(value["sum_of_max"])) / count)))
  return ranges


def simulated_logits(model: nnx.Module, images: jax.Array) -> jax.Array:
  """The forward pass the export's parity check compares with: fake-quantized for QAT."""
  return model(images)


def output_range(model: nnx.Module) -> tuple[float, float] | None:
  """The learned range of the logits (the model's final output), or None."""
  stat = getattr(model, "final_output0", None)
  if not isinstance(stat, qwix.QuantStat):
    return None
  value = stat.get_value()
  count = float(value["count"])
  if count == 0:
    return None
  return float(np.min(value["sum_of_min"])) / count, float(np.max(value["sum_of_max"])) / count


# ------------------------------------------------------------------ int8 export

_LAYER_OPS = ("Conv", "MatMul", "Gemm")


def _as_jax_layout(onnx_weight: np.ndarray, op_type: str, transposed: bool) -> np.ndarray:
  """An ONNX Conv [O, I, kh, kw] / MatMul [in, out] / Gemm weight in JAX's [..., in, out]."""
  if op_type == "Conv":
    return onnx_weight.transpose(2, 3, 1, 0)
  return onnx_weight.T if transposed else onnx_weight


def _channel_profile(kernel: np.ndarray) -> np.ndarray:
  """|w| per output channel scaled to max 1: unchanged by BatchNorm folding (a per-channel scale)."""
  flat = np.abs(kernel.reshape(-1, kernel.shape[-1]))
  return flat / np.maximum(flat.max(axis=0, keepdims=True), 1e-30)


def onnx_range_overrides(onnx_model, model: nnx.Module) -> dict[str, list[dict]]:
  """ONNX Runtime `TensorQuantOverrides` that give each layer input its QAT range.

  Each Conv/MatMul/Gemm node of the float ONNX graph is matched to the JAX
  layer whose kernel it holds (same shape and, per output channel, the same
  relative magnitudes: BatchNorm folding scales channels but keeps those);
  its activation input then takes that layer's learned range, and the
  `logits` output the learned output range. Raises ValueError when a node
  matches no layer.
  """
  from onnx import numpy_helper  # pylint: disable=import-outside-toplevel  (export only)

  layers = activation_ranges(model)
  weights = {t.name: numpy_helper.to_array(t) for t in onnx_model.graph.initializer}
  overrides = {}
  for node in onnx_model.graph.node:
    if node.op_type not in _LAYER_OPS or node.input[1] not in weights:
      continue
    transposed = any(a.name == "transB" and a.i for a in node.attribute)
    candidate = _as_jax_layout(weights[node.input[1]], node.op_type, transposed)
    best = None
    for kernel, value_range in layers:
      if kernel.shape != candidate.shape:
        continue
      distance = float(np.max(np.abs(_channel_profile(kernel) - _channel_profile(candidate))))
      if distance < 1e-3 and (best is None or distance < best[0]):
        best = (distance, value_range)
    if best is None:
      raise ValueError(f"ONNX node {node.name!r} ({node.op_type}, weight "
                       f"{list(weights[node.input[1]].shape)}) matches no quantized layer")
    low, high = best[1]
    overrides[node.input[0]] = [{"rmin": np.float32(min(low, 0.0)),
                                 "rmax": np.float32(max(high, 0.0))}]
  if not overrides:
    raise ValueError("no Conv/MatMul/Gemm node of the ONNX graph holds a quantized layer's "
                     "weights as an initializer: the QAT ranges cannot be placed")
  logits = output_range(model)
  if logits is not None:
    overrides["logits"] = [{"rmin": np.float32(min(logits[0], 0.0)),
                            "rmax": np.float32(max(logits[1], 0.0))}]
  return overrides
