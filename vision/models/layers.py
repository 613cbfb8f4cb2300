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
import functools
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


def materialise(x: jax.Array, witness: jax.Array | None = None) -> jax.Array:
  """`x`, as a value XLA must hold in memory: its consumers cannot fuse (and recompute) its producers.

  XLA expands optimization barriers before fusion, so they do not stop it; a
  conditional is a fusion boundary, and its predicate is only known at run time.
  The predicate is whether the first element of `witness` (default `x`) is a
  number; the other branch makes `x` all NaN, so non-finite stays non-finite
  (the train step's check) at no cost to finite values. Pass a replicated
  `witness` (a kernel) when `x` is sharded over the data axis: slicing one
  element out of a sharded array is not allowed there.
  """
  first = (x if witness is None else witness).reshape(-1)[0]
  return lax.cond(first == first, lambda v: v, lambda v: jnp.full_like(v, jnp.nan), x)


def _hashable_padding(padding):
  return padding if isinstance(padding, str) else tuple(tuple(p) for p in padding)


@dataclasses.dataclass(frozen=True)
class _LaxConv:
  """`lax.conv_general_dilated`'s static arguments (hashable, for `custom_vjp`)."""
  window_strides: tuple[int, ...]
  padding: str | tuple[tuple[int, int], ...]
  kwargs: tuple[tuple[str, object], ...]

  def __call__(self, lhs: jax.Array, rhs: jax.Array) -> jax.Array:
    return lax.conv_general_dilated(lhs, rhs, self.window_strides, self.padding,
                                    **dict(self.kwargs))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def lax_conv(lhs: jax.Array, rhs: jax.Array, conv: _LaxConv) -> jax.Array:
  """`lax.conv_general_dilated`, whose backward pass reads its input and gradient from memory.

  Its gradients are JAX's own (the same two convolutions). Without the
  `materialise` barriers XLA:CPU fused the elementwise chains that produce the
  input (BatchNorm, ReLU, residual adds: several tensors) and the incoming
  gradient into the layout transposes the weight-gradient convolution needs,
  recomputing each chain there instead of reading its result once (ResNet-18:
  a third of the step's op time went to such transposes).
  """
  return conv(lhs, rhs)


def _lax_conv_forward(lhs, rhs, conv):
  return conv(lhs, rhs), (lhs, rhs)


def _lax_conv_backward(conv, residuals, gradient):
  lhs, rhs = residuals
  # The kernel is the witness: it is replicated, while the activations may be data-sharded.
  _, vjp = jax.vjp(conv, materialise(lhs, rhs), rhs)
  return vjp(materialise(gradient, rhs))


lax_conv.defvjp(_lax_conv_forward, _lax_conv_backward)


@dataclasses.dataclass(frozen=True)
class ConvLowering:
  """`nnx.Conv`'s `conv_general_dilated` hook: lax or matmuls, decided at trace time.

  `materialise_backward=False` runs `lax.conv_general_dilated` itself rather than
  `lax_conv` (the same values and gradients, without the backward's barriers): for
  quantization-aware training, whose interception of the convolution must not run
  inside a custom VJP (flax NNX refuses the state it creates there).
  """
  impl: str = "auto"
  materialise_backward: bool = True

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
    if not matmul_fits and not self.materialise_backward:
      return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **lax_kwargs)
    if not matmul_fits:
      return lax_conv(lhs, rhs, _LaxConv(tuple(window_strides), _hashable_padding(padding),
                                         tuple(sorted(lax_kwargs.items()))))
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
    self.conv_general_dilated = dataclasses.replace(self.conv_general_dilated,
                                                    impl=_check_impl(impl))

  def set_materialise_backward(self, materialise: bool) -> None:
    """Whether the backward pass reads its inputs from memory (`lax_conv`); off for QAT."""
    self.conv_general_dilated = dataclasses.replace(self.conv_general_dilated,
                                                    materialise_backward=materialise)


def set_conv_impl(model: nnx.Module, impl: str) -> nnx.Module:
  """Sets the lowering of every `Conv` inside `model` ('auto', 'matmul' or 'lax'); returns it."""
  _check_impl(impl)
  for _, module in nnx.iter_graph(model):
    if isinstance(module, Conv):
      module.set_conv_impl(impl)
  return model


def set_materialise_backward(model: nnx.Module, materialise: bool) -> nnx.Module:
  """Turns `lax_conv`'s backward barriers on or off in every `Conv` of `model`; returns it."""
  for _, module in nnx.iter_graph(model):
    if isinstance(module, Conv):
      module.set_materialise_backward(materialise)
  return model


def max_pool(x: jax.Array, window: tuple[int, int], strides: tuple[int, int] | None = None,
             padding: str = "VALID") -> jax.Array:
  """`nnx.max_pool` on NHWC; non-overlapping VALID windows by a reshape and a max.

  XLA:CPU's max-pool gradient (select-and-scatter) is slow; this one is
  elementwise (`window_max`), and goes, as PyTorch's and `nnx.max_pool`'s do, to
  the first maximum of each window.
  """
  strides = tuple(strides or window)
  if tuple(window) != strides or padding != "VALID" or x.ndim != 4:
    return nnx.max_pool(x, window, strides, padding)
  (ph, pw), (batch, height, width, channels) = window, x.shape
  ho, wo = height // ph, width // pw
  x = crop(x, ho * ph, wo * pw)
  # One axis split per reshape: the rule explicitly sharded arrays (the data axis) allow.
  x = x.reshape(batch, ho, ph, wo * pw, channels).reshape(batch, ho, ph, wo, pw, channels)
  return window_max(x)


@jax.custom_vjp
def window_max(windows: jax.Array) -> jax.Array:
  """[B, Ho, ph, Wo, pw, C] → [B, Ho, Wo, C], the maximum of each ph×pw window.

  The gradient goes to each window's first maximum (row-major), found by
  elementwise comparisons. Autodiff of `max` would split it between equal
  maxima with a sum over the window; XLA:CPU fused that sum, and the division
  by it, with the convolution producing the incoming gradient into one YNNPACK
  call that ran the convolution at a fraction of oneDNN's speed (small CNN:
  the two largest ops of the step).
  """
  return windows.max(axis=(2, 4))


def _window_max_forward(windows):
  maxima = windows.max(axis=(2, 4))
  return maxima, (windows, maxima)


def _window_max_backward(residuals, gradient):
  windows, maxima = residuals
  maxima, gradient = maxima[:, :, None, :, None], gradient[:, :, None, :, None]
  zeros = jnp.zeros_like(gradient)
  taken, rows = None, []
  for i in range(windows.shape[2]):
    columns = []
    for j in range(windows.shape[4]):
      tap = windows[:, :, i:i + 1, :, j:j + 1]
      hit = tap == maxima if taken is None else (tap == maxima) & ~taken
      taken = hit if taken is None else taken | hit
      columns.append(jnp.where(hit, gradient, zeros))
    rows.append(jnp.concatenate(columns, axis=4))
  return (jnp.concatenate(rows, axis=2),)


window_max.defvjp(_window_max_forward, _window_max_backward)


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
  return (materialise(gradient),)


gradient_barrier.defvjp(_barrier_forward, _barrier_backward)
