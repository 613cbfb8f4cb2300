"""Layers shared by every architecture in the model zoo.

    from vision.models.layers import Conv
    conv = Conv(3, 64, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, rngs=nnx.Rngs(0))
    set_conv_impl(model, "matmul")        # or "lax", or "auto" (the default)

`Conv` is the framework's convolution: every model builds its convolutions from
it (never from `nnx.Conv` directly), so that how a convolution is lowered is
chosen in one place. It is an `nnx.Conv` (same constructor arguments, same
parameters: `kernel` [kh, kw, in/groups, out] and `bias`), so checkpoints do not
depend on the lowering. Only the lowering differs, picked by `conv_impl`:

  * "lax": `lax.conv_general_dilated`, what XLA runs best on GPU and TPU;
  * "matmul": the convolution written as matrix products: shifted (strided,
    dilated) slices of the padded input concatenated into patches and one
    matmul (im2col); a reshape instead of slices for non-overlapping patches
    (ViT's 16×16/16); a strided slice for 1×1; and, for depthwise
    convolutions, a sum of shifted slices times per-channel weights (no
    matmul, so no k² wasted multiplies by zero);
  * "auto" (default): on the CPU backend (at trace time), "matmul" for
    depthwise convolutions, which XLA:CPU's own convolution runs 5× slower
    (MobileNetV2: 82 vs 389 images/s), and "lax" for the rest, which
    `vision.xla_flags` sends to oneDNN (small CNN +46%, ResNet-18 +68% over
    im2col); elsewhere "lax".

Configs choose it with `model.conv_impl`; `create_model` applies it to every
`Conv` of a model through `set_conv_impl`. What "matmul" does not cover (1-D
or 3-D convolutions, input dilation, other dimension orders) uses `lax` either way.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from flax import nnx
import jax
from jax import lax
import jax.numpy as jnp

CONV_IMPLS = ("auto", "matmul", "lax")

_NHWC_HWIO = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def _check_impl(impl: str) -> str:
  if impl not in CONV_IMPLS:
    raise ValueError(f"conv_impl is {impl!r}; expected one of {', '.join(CONV_IMPLS)}")
  return impl


def resolve_conv_impl(impl: str, *, depthwise: bool = False) -> str:
  """'auto' → 'matmul' for a depthwise convolution on the CPU backend, else 'lax'."""
  if _check_impl(impl) != "auto":
    return impl
  return "matmul" if depthwise and jax.default_backend() == "cpu" else "lax"


def _pads(padding, spatial: Sequence[int], window: Sequence[int],
          strides: Sequence[int]) -> list[tuple[int, int]]:
  if isinstance(padding, str):
    return [tuple(p) for p in lax.padtype_to_pads(spatial, window, strides, padding)]
  return [tuple(p) for p in padding]


def _patch_slices(x: jax.Array, kernel_size: Sequence[int], strides: Sequence[int],
                  dilation: Sequence[int], out_size: Sequence[int]) -> list[jax.Array]:
  """One [B, Ho, Wo, C] slice of the padded input per kernel tap, in (kh, kw) order."""
  (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel_size, strides, dilation, out_size
  batch, channels = x.shape[0], x.shape[3]
  return [lax.slice(x, (0, i * dh, j * dw, 0),
                    (batch, i * dh + (ho - 1) * sh + 1, j * dw + (wo - 1) * sw + 1, channels),
                    (1, sh, sw, 1))
          for i in range(kh) for j in range(kw)]


def crop(x: jax.Array, height: int, width: int) -> jax.Array:
  """The top-left `height`×`width` of NHWC `x`: `x[:, :height, :width]` as one `lax.slice`.

  Not NumPy indexing: under a symbolic batch dimension (`jax.export`, jax2tf)
  `x[:, :h, :w]` lowers to `stablehlo.dynamic_gather`, which the TFLite
  converter (and so the ONNX route) rejects; `lax.slice` lowers to a slice
  there, and to the same HLO as the indexing with a concrete batch.
  """
  if tuple(x.shape[1:3]) == (height, width):
    return x
  return lax.slice(x, (0, 0, 0, 0), (x.shape[0], height, width, x.shape[3]))


def _patchify(x: jax.Array, patch: Sequence[int], out_size: Sequence[int]) -> jax.Array:
  """Non-overlapping patches [B, Ho, Wo, ph*pw*C] by a reshape: no slices at all."""
  (ph, pw), (ho, wo) = patch, out_size
  batch, channels = x.shape[0], x.shape[3]
  x = crop(x, ho * ph, wo * pw)
  # One axis split per reshape: the rule explicitly sharded arrays (the data axis) allow.
  x = x.reshape(batch, ho, ph, wo * pw, channels).reshape(batch, ho, ph, wo, pw, channels)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(batch, ho, wo, ph * pw * channels)


def _depthwise(taps: list[jax.Array], kernel: jax.Array, multiplier: int) -> jax.Array:
  """Σ_t tap_t · kernel[t] per channel; output channel o reads input channel o // multiplier."""
  weights = kernel.reshape(len(taps), -1)  # [taps, out]
  total = None
  for index, tap in enumerate(taps):
    if multiplier > 1:
      tap = jnp.repeat(tap, multiplier, axis=-1)
    term = tap * weights[index]
    total = term if total is None else total + term
  return total


def _contract(patches: jax.Array, kernel: jax.Array, groups: int, precision,
              preferred_element_type) -> jax.Array:
  """patches [B, Ho, Wo, T·Cin] (tap-major) times kernel [kh, kw, Cin/groups, Cout].

  The batch axis is never reshaped (it may be sharded): dot_general contracts
  the last axis of the 4-D patches directly, which XLA lowers to one GEMM.
  """
  *_, in_per_group, out = kernel.shape
  if groups == 1:
    return lax.dot_general(patches, kernel.reshape(-1, out), (((3,), (0,)), ((), ())),
                           precision=precision, preferred_element_type=preferred_element_type)
  taps = patches.shape[-1] // (groups * in_per_group)
  lhs = patches.reshape(*patches.shape[:3], taps, groups, in_per_group)
  rhs = kernel.reshape(taps, in_per_group, groups, out // groups)
  # Contract (tap, channel) with the group as a batch dimension: [G, B, Ho, Wo, O/G].
  y = lax.dot_general(lhs, rhs, (((3, 5), (0, 1)), ((4,), (2,))), precision=precision,
                      preferred_element_type=preferred_element_type)
  return y.transpose(1, 2, 3, 0, 4).reshape(*patches.shape[:3], out)


def matmul_conv(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding, *,
                rhs_dilation: Sequence[int] | None = None, feature_group_count: int = 1,
                precision=None, preferred_element_type=None) -> jax.Array:
  """A 2-D NHWC × HWIO convolution as `lax.conv_general_dilated` computes it, from matmuls."""
  kh, kw, in_per_group, out = rhs.shape
  dilation = tuple(rhs_dilation or (1, 1))
  strides = tuple(window_strides)
  window = ((kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1)
  pads = _pads(padding, lhs.shape[1:3], window, strides)
  if any(pads[0] + pads[1]):
    lhs = lax.pad(lhs, jnp.zeros((), lhs.dtype),
                  ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))
  out_size = tuple((lhs.shape[1 + d] - window[d]) // strides[d] + 1 for d in range(2))
  groups = feature_group_count
  if in_per_group == 1 and groups > 1:
    taps = _patch_slices(lhs, (kh, kw), strides, dilation, out_size)
    y = _depthwise(taps, rhs, out // groups)
    return y if preferred_element_type is None else y.astype(preferred_element_type)
  if (kh, kw) == strides and dilation == (1, 1):
    patches = _patchify(lhs, (kh, kw), out_size)
  else:
    taps = _patch_slices(lhs, (kh, kw), strides, dilation, out_size)
    patches = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
  return _contract(patches, rhs, groups, precision, preferred_element_type)


@dataclasses.dataclass(frozen=True)
class ConvLowering:
  """`nnx.Conv`'s `conv_general_dilated` hook: lax or matmuls, decided at trace time."""
  impl: str = "auto"

  def __call__(self, lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
               dimension_numbers=None, feature_group_count=1, precision=None,
               preferred_element_type=None, out_sharding=None, **kwargs) -> jax.Array:
    lax_kwargs = dict(lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                      dimension_numbers=dimension_numbers,
                      feature_group_count=feature_group_count, precision=precision,
                      preferred_element_type=preferred_element_type, **kwargs)
    if out_sharding is not None:
      lax_kwargs["out_sharding"] = out_sharding
    depthwise = feature_group_count > 1 and rhs.shape[-2] == 1
    matmul_fits = (resolve_conv_impl(self.impl, depthwise=depthwise) == "matmul"
                   and lhs.ndim == 4
                   and dimension_numbers == _NHWC_HWIO and not kwargs
                   and tuple(lhs_dilation or (1, 1)) == (1, 1) and out_sharding is None)
    if not matmul_fits:
      return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **lax_kwargs)
    return matmul_conv(lhs, rhs, window_strides, padding, rhs_dilation=rhs_dilation,
                       feature_group_count=feature_group_count, precision=precision,
                       preferred_element_type=preferred_element_type)


class Conv(nnx.Conv):
  """`nnx.Conv` with a choice of lowering; `conv_impl` is 'auto', 'matmul' or 'lax'.

  Takes every `nnx.Conv` argument (except `conv_general_dilated`, which
  `conv_impl` sets) and holds the same parameters.
  """

  def __init__(self, in_features: int, out_features: int, kernel_size, strides=1, *,
               conv_impl: str = "auto", **kwargs):
    super().__init__(in_features, out_features, kernel_size, strides,
                     conv_general_dilated=ConvLowering(_check_impl(conv_impl)), **kwargs)

  @property
  def conv_impl(self) -> str:
    return self.conv_general_dilated.impl

  def set_conv_impl(self, impl: str) -> None:
    self.conv_general_dilated = ConvLowering(_check_impl(impl))


def set_conv_impl(model: nnx.Module, impl: str) -> nnx.Module:
  """Sets the lowering of every `Conv` inside `model` ('auto', 'matmul' or 'lax'); returns it."""
  _check_impl(impl)
  for _, module in nnx.iter_graph(model):
    if isinstance(module, Conv):
      module.set_conv_impl(impl)
  return model


def max_pool(x: jax.Array, window: tuple[int, int], strides: tuple[int, int] | None = None,
             padding: str = "VALID") -> jax.Array:
  """`nnx.max_pool` on NHWC; non-overlapping VALID windows by a reshape and a max.

  XLA:CPU's max-pool gradient (select-and-scatter) is slow; the reshape's
  gradient is elementwise. Where a window holds several equal maxima the
  gradient is split between them instead of going to one (after a ReLU such
  ties are zeros whose gradient the ReLU drops anyway).
  """
  strides = tuple(strides or window)
  if tuple(window) != strides or padding != "VALID" or x.ndim != 4:
    return nnx.max_pool(x, window, strides, padding)
  (ph, pw), (batch, height, width, channels) = window, x.shape
  ho, wo = height // ph, width // pw
  x = crop(x, ho * ph, wo * pw)
  # One axis split per reshape: the rule explicitly sharded arrays (the data axis) allow.
  x = x.reshape(batch, ho, ph, wo * pw, channels).reshape(batch, ho, ph, wo, pw, channels)
  return x.max(axis=(2, 4))


@jax.custom_vjp
def gradient_barrier(x: jax.Array) -> jax.Array:
  """Identity whose gradient XLA must materialise: stops fusion across blocks in the backward pass.

  Without it XLA:CPU fuses a residual stream's gradient through every later
  block into each consumer and recomputes it there (quadratic in depth).
  """
  return x


def _barrier_forward(x):
  return x, None


def _barrier_backward(_, gradient):
  # XLA expands optimization barriers before fusion, so they do not stop it; a
  # conditional is a fusion boundary, and its predicate is only known at run time.
  first = gradient.reshape(-1)[0]
  # The other branch keeps a NaN gradient non-finite, so the train step's check still sees it.
  return (lax.cond(first == first, lambda g: g, lambda g: jnp.full_like(g, jnp.nan), gradient),)


gradient_barrier.defvjp(_barrier_forward, _barrier_backward)
