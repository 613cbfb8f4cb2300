"""BatchNorm folded into the convolution before it, for exported (inference) graphs.

    folded = fold_batch_norms(nnx.clone(model))  # same logits in eval mode, no BatchNorm ops

In eval mode `norm(conv(x))` is an affine map per output channel, so it is
one convolution with kernel `w · a` and bias `(b − mean) · a + β`, where
`a = γ / sqrt(var + ε)` (Jacob et al. 2018, "Quantization and Training of
Neural Networks for Efficient Integer-Arithmetic-Only Inference", §3.2; what
`torch.ao.quantization.fuse_modules` and TensorFlow's converters do for their
own graphs). Exported through jax2tf, an unfolded BatchNorm reaches TFLite as
BROADCAST_TO, SUB, MUL and ADD ops that its converter does not fuse: in fp32
they only cost time, but int8 quantizes each one on its own, per tensor, and
the error compounds over a MobileNet's 50 BatchNorms (top-1 agreement with
JAX fell to 28% before folding).

The pairs are found by attribute name in each module (`CONV_NORM_PAIRS`),
which is how every family here writes `norm(conv(x))`; a BatchNorm that does
not directly follow its convolution must not be named as a pair.
"""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp

# (convolution, the BatchNorm applied right to its output), as the model families name them.
CONV_NORM_PAIRS = (("conv", "norm"), ("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"),
                   ("project", "project_norm"))


class FoldedNorm(nnx.Module):
  """What a folded BatchNorm leaves behind: the identity (a module, so the graph keeps its shape)."""

  def __call__(self, x: jax.Array) -> jax.Array:
    return x


def _fold(conv: nnx.Conv, norm: nnx.BatchNorm) -> None:
  """Rewrites `conv` (in place) to compute `norm(conv(x))` with `norm` in eval mode."""
  mean, var = norm.mean[...], norm.var[...]
  gamma = norm.scale[...] if norm.scale is not None else jnp.ones_like(mean)
  beta = norm.bias[...] if norm.bias is not None else jnp.zeros_like(mean)
  factor = gamma / jnp.sqrt(var + norm.epsilon)  # [out_features]
  bias = conv.bias[...] if conv.bias is not None else jnp.zeros_like(mean)
  kernel = conv.kernel[...]  # [kh, kw, in_features // groups, out_features]
  conv.kernel = nnx.Param((kernel * factor).astype(kernel.dtype))
  conv.bias = nnx.Param(((bias - mean) * factor + beta).astype(kernel.dtype))
  conv.use_bias = True


def fold_batch_norms(model: nnx.Module) -> int:
  """Folds every `CONV_NORM_PAIRS` BatchNorm of `model` into its convolution, in place.

  Only for inference: the folded model has no BatchNorm statistics left to
  train. Returns how many were folded.
  """
  pairs = []
  for _, module in nnx.iter_graph(model):
    for conv_name, norm_name in CONV_NORM_PAIRS:
      conv, norm = getattr(module, conv_name, None), getattr(module, norm_name, None)
      if isinstance(conv, nnx.Conv) and isinstance(norm, nnx.BatchNorm):
        pairs.append((module, conv, norm_name, norm))
  for module, conv, norm_name, norm in pairs:
    _fold(conv, norm)
    setattr(module, norm_name, FoldedNorm())
  return len(pairs)
