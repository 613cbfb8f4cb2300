"""BatchNorm and LayerNorm whose gradients make fewer trips through memory than autodiff's.

    norm = BatchNorm(64, momentum=0.9, epsilon=1e-5, rngs=nnx.Rngs(0))   # an nnx.BatchNorm
    y = norm(x)       # training: batch statistics; running averages updated
    norm = LayerNorm(384, epsilon=1e-6, use_fast_variance=False, rngs=nnx.Rngs(0))

They are `nnx.BatchNorm` and `nnx.LayerNorm` (same constructors, parameters
`scale`/`bias`, BatchNorm's running `mean`/`var` and their update, the same
forward values), so checkpoints and weight imports do not change. What differs
is the gradient, for features on the last axis (every model here is NHWC, and
tokens are [B, N, D]): normalising is one function with a hand-written VJP.

BatchNorm in training (`normalize_with_batch_stats`). Its
forward pass reads x twice (the statistics, then y = (x - mean)·scale/σ + bias)
and keeps x for the backward pass, which reads x and dy for two sums (Σdy, Σdy·x),
then once more for dx. Autodiff of nnx's formula (statistics, centring, scaling, each
differentiated) held x - mean as a second tensor and made more passes; in the
small CNN, whose first stage is memory-bound, BatchNorm and its gradient were
most of the step's elementwise time.

The statistics are nnx's: float32, mean and E[x²] - mean² (clipped at 0) over
every axis but the last. The gradient is the exact one of that computation
(Ioffe & Szegedy 2015, eq. after Algorithm 1); running averages take no
gradient, as in nnx.

LayerNorm (`layer_normalize`): the same idea over the last axis, with nnx's
two statistics (two-pass variance when `use_fast_variance=False`, as the ViTs
use). Autodiff of nnx's formula spread each LayerNorm's gradient over a dozen
small ops; in ViT-Ti at 32 px (5 tokens), per-op cost is much of the step.
"""

from __future__ import annotations

import functools

from flax import nnx
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np


def _batch_stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  axes = tuple(range(x.ndim - 1))
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  mean = x.mean(axes)
  return mean, jnp.maximum(0.0, (x * x).mean(axes) - mean * mean)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def normalize_with_batch_stats(x: jax.Array, scale: jax.Array, bias: jax.Array,
                               epsilon: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(y, mean, var): x [..., C] normalised by its statistics over every axis but the last.

  y = (x - mean) · scale / sqrt(var + epsilon) + bias, in x's dtype; mean and
  var are float32 [C] and carry no gradient (they feed running averages).
  """
  return _normalize_forward(x, scale, bias, epsilon)[0]


def _normalize_forward(x, scale, bias, epsilon):
  mean, var = _batch_stats(x)
  inv_std = lax.rsqrt(var + epsilon)
  y = (x.astype(mean.dtype) - mean) * (inv_std * scale) + bias
  return (y.astype(x.dtype), mean, var), (x, mean, inv_std, scale)


def _normalize_backward(epsilon, residuals, cotangents):
  del epsilon
  x, mean, inv_std, scale = residuals
  dy = cotangents[0].astype(inv_std.dtype)
  x = x.astype(inv_std.dtype)
  axes = tuple(range(x.ndim - 1))
  count = x.size // x.shape[-1]
  # Sums of dy and dy·x read the two tensors as they are; a sum over dy·x̂ made XLA write x̂
  # (a broadcast of the statistics) to memory first, for YNNPACK's reduction to read.
  dbias = dy.sum(axes)
  dscale = inv_std * ((dy * x).sum(axes) - mean * dbias)
  # dx = scale·σ⁻¹·(dy - mean(dy) - x̂·mean(dy·x̂)), one elementwise pass over dy and x.
  multiplier = scale * inv_std
  dx = multiplier * (dy - dbias / count) - (multiplier * inv_std * dscale / count) * (x - mean)
  return dx.astype(residuals[0].dtype), dscale.astype(scale.dtype), dbias.astype(scale.dtype)


normalize_with_batch_stats.defvjp(_normalize_forward, _normalize_backward)


class BatchNorm(nnx.BatchNorm):
  """`nnx.BatchNorm` with `normalize_with_batch_stats` in training (see the module docstring)."""

  def __call__(self, x: jax.Array, use_running_average: bool | None = None, *,
               mask: jax.Array | None = None) -> jax.Array:
    running = self.use_running_average if use_running_average is None else use_running_average
    fused = (not running and mask is None and self.axis_name is None
             and self.axis in (-1, x.ndim - 1) and self.use_fast_variance
             and self.use_scale and self.use_bias)
    if not fused:
      return super().__call__(x, use_running_average, mask=mask)
    dtype = self.dtype or jnp.result_type(x, self.scale[...])
    # Parameters rounded to the compute dtype first, as nnx's promotion does.
    scale, bias = (p[...].astype(dtype).astype(jnp.float32) for p in (self.scale, self.bias))
    y, mean, var = normalize_with_batch_stats(x.astype(dtype), scale, bias, self.epsilon)
    mean, var = lax.stop_gradient(mean), lax.stop_gradient(var)
    self.mean[...] = self.momentum * self.mean[...] + (1 - self.momentum) * mean
    self.var[...] = self.momentum * self.var[...] + (1 - self.momentum) * var
    return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def layer_normalize(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float,
                    fast_variance: bool) -> jax.Array:
  """x [..., D] normalised over its last axis: (x - mean) · scale / sqrt(var + epsilon) + bias.

  Statistics in float32 (at least); `fast_variance`: var = E[x²] - mean² (clipped at
  0) instead of E[(x - mean)²]. The result is in x's dtype.
  """
  return _layer_forward(x, scale, bias, epsilon, fast_variance)[0]


def _layer_forward(x, scale, bias, epsilon, fast_variance):
  compute = jnp.promote_types(x.dtype, jnp.float32)
  xc = x.astype(compute)
  mean = xc.mean(-1, keepdims=True)
  if fast_variance:
    var = jnp.maximum(0.0, (xc * xc).mean(-1, keepdims=True) - mean * mean)
  else:
    var = jnp.square(xc - mean).mean(-1, keepdims=True)
  inv_std = lax.rsqrt(var + epsilon)
  y = (xc - mean) * (inv_std * scale) + bias
  return y.astype(x.dtype), (x, mean, inv_std, scale)


def _layer_backward(epsilon, fast_variance, residuals, dy):
  del epsilon, fast_variance
  x, mean, inv_std, scale = residuals
  normalized = (x.astype(inv_std.dtype) - mean) * inv_std
  dy = dy.astype(inv_std.dtype)
  rows = tuple(range(x.ndim - 1))
  scaled = dy * scale
  # dx = σ⁻¹·(g - mean(g) - x̂·mean(g·x̂)) with g = dy·scale, per row.
  dx = inv_std * (scaled - scaled.mean(-1, keepdims=True)
                  - normalized * (scaled * normalized).mean(-1, keepdims=True))
  return (dx.astype(x.dtype), (dy * normalized).sum(rows).astype(scale.dtype),
          dy.sum(rows).astype(scale.dtype))


layer_normalize.defvjp(_layer_forward, _layer_backward)


class LayerNorm(nnx.LayerNorm):
  """`nnx.LayerNorm` with `layer_normalize` over the last axis (see the module docstring)."""

  def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
    last = (-1, x.ndim - 1)
    fused = (mask is None and self.axis_name is None and self.use_scale and self.use_bias
             and tuple(np.atleast_1d(self.reduction_axes)) in ((-1,), (x.ndim - 1,))
             and tuple(np.atleast_1d(self.feature_axes))[0] in last)
    if not fused:
      return super().__call__(x, mask=mask)
    dtype = self.dtype or jnp.result_type(x, self.scale[...])
    compute = jnp.promote_types(dtype, jnp.float32)
    # Parameters rounded to the compute dtype first, as nnx's promotion does.
    scale, bias = (p[...].astype(dtype).astype(compute) for p in (self.scale, self.bias))
    return layer_normalize(x.astype(dtype), scale, bias, self.epsilon, self.use_fast_variance)
