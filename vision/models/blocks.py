"""Building blocks of the mobile CNN families (MobileNet, EfficientNet): conv-norm-act, SE, drop path.

    stem = ConvNormAct(3, 32, 3, stride=2, activation=jax.nn.relu6, rngs=nnx.Rngs(0))
    y = stem(images)                                  # images: [B, H, W, C]

Padding is either PyTorch's symmetric `k // 2` (`padding='torch'`), so that
torchvision / timm weights map one to one, or TensorFlow's asymmetric 'SAME'
(`padding='same'`) that weights ported from TF (EfficientNet-Lite) were trained with.
"""

from __future__ import annotations

from typing import Callable, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from vision.models.normalization import BatchNorm
from vision.models.layers import Conv

Activation = Callable[[jax.Array], jax.Array]



def variance_scaling(scale: float, mode: str) -> Callable:
  """`jax.nn.initializers.variance_scaling(scale, mode, 'normal')`, drawn with NumPy.

  `jax.random.normal` compiles once per shape (~0.35 s of CPU each): 30 s to
  create an EfficientNet-B0. NumPy, seeded from the key, compiles nothing.
  """
  traced = jax.nn.initializers.variance_scaling(scale, mode, "normal")

  def init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    if isinstance(key, jax.core.Tracer):  # created under jit / eval_shape: no NumPy
      return traced(key, shape, dtype)
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
    std = np.sqrt(scale / (fan_in if mode == "fan_in" else fan_out))
    seed = np.asarray(jax.random.key_data(key)).ravel().tolist()
    return jnp.asarray(np.random.default_rng(seed).normal(0.0, std, shape), dtype)
  return init


he_normal_fan_out = variance_scaling(2.0, "fan_out")
lecun_normal = variance_scaling(1.0, "fan_in")
_kernel_init = he_normal_fan_out


def linear(in_features: int, out_features: int, *, dtype=jnp.float32,
           rngs: nnx.Rngs) -> nnx.Linear:
  """`nnx.Linear` with its default (LeCun normal) init, drawn without per-shape compiles."""
  return nnx.Linear(in_features, out_features, kernel_init=lecun_normal, dtype=dtype, rngs=rngs)


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
  """Channels rounded to a multiple of `divisor`, never below 90% of `value` (as TF/torchvision)."""
  min_value = min_value or divisor
  rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * value else rounded


def hard_sigmoid(x: jax.Array) -> jax.Array:
  """PyTorch's `hardsigmoid`: relu6(x + 3) / 6 (jax.nn.hard_sigmoid is the same function)."""
  return jax.nn.relu6(x + 3.0) / 6.0


def hard_swish(x: jax.Array) -> jax.Array:
  return x * hard_sigmoid(x)


def identity(x: jax.Array) -> jax.Array:
  return x


def conv(in_features: int, out_features: int, kernel: int, stride: int = 1, *, groups: int = 1,
         padding: str = "torch", use_bias: bool = False, dtype=jnp.float32,
         rngs: nnx.Rngs) -> Conv:
  """A square convolution with PyTorch ('torch') or TensorFlow ('same') padding."""
  pad = "SAME" if padding == "same" else ((kernel // 2, kernel // 2),) * 2
  return Conv(in_features, out_features, (kernel, kernel), (stride, stride), padding=pad,
              feature_group_count=groups, use_bias=use_bias, dtype=dtype,
              kernel_init=_kernel_init, rngs=rngs)


def batch_norm(features: int, *, eps: float = 1e-5, dtype=jnp.float32,
               rngs: nnx.Rngs) -> BatchNorm:
  return BatchNorm(features, momentum=0.9, epsilon=eps, dtype=dtype, rngs=rngs)


class ConvNormAct(nnx.Module):
  """Convolution (no bias), BatchNorm, activation: torchvision's `Conv2dNormActivation`."""

  def __init__(self, in_features: int, out_features: int, kernel: int, stride: int = 1, *,
               groups: int = 1, activation: Activation = jax.nn.relu, eps: float = 1e-5,
               padding: str = "torch", dtype=jnp.float32, rngs: nnx.Rngs):
    self.conv = conv(in_features, out_features, kernel, stride, groups=groups, padding=padding,
                     dtype=dtype, rngs=rngs)
    self.norm = batch_norm(out_features, eps=eps, dtype=dtype, rngs=rngs)
    self.activation = activation

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.activation(self.norm(self.conv(x)))


class SqueezeExcite(nnx.Module):
  """Channel attention: global pool, reduce (1×1 conv + act), expand (1×1 conv + gate), rescale."""

  def __init__(self, features: int, squeeze: int, *, activation: Activation = jax.nn.relu,
               gate: Activation = jax.nn.sigmoid, dtype=jnp.float32, rngs: nnx.Rngs):
    self.reduce = conv(features, squeeze, 1, use_bias=True, dtype=dtype, rngs=rngs)
    self.expand = conv(squeeze, features, 1, use_bias=True, dtype=dtype, rngs=rngs)
    self.activation, self.gate = activation, gate

  def __call__(self, x: jax.Array) -> jax.Array:
    scale = x.mean(axis=(1, 2), keepdims=True)
    return x * self.gate(self.expand(self.activation(self.reduce(scale))))


def drop_path(rate: float, *, rngs: nnx.Rngs) -> nnx.Dropout:
  """Stochastic depth for NHWC residual branches: drops whole examples, scaling survivors.

  It is `nnx.Dropout` with the mask broadcast over H, W, C (torchvision's
  `StochasticDepth(mode='row')`), so `model.eval()` and the train step's reseeding apply.
  """
  return nnx.Dropout(rate, broadcast_dims=(1, 2, 3), rngs=rngs)


def stage_groups(stage_sizes: Sequence[int], tail: tuple[str, ...]) -> list[tuple[str, ...]]:
  """Layer groups of a stem + `blocks` network: [('stem',), stage 1's blocks, ..., last + tail]."""
  groups, start = [("stem",)], 0
  for size in stage_sizes:
    groups.append(tuple(f"blocks.{i}" for i in range(start, start + size)))
    start += size
  groups[-1] += tail
  return groups


class PooledConvNet(nnx.Module):
  """The shared ends of MobileNetV2 and EfficientNet: `stem` → `blocks` → 1×1 conv `last` →
  global average pool → `dropout` → `head`, with `stage_sizes` giving the stages of `blocks`."""

  def layer_groups(self) -> list[tuple[str, ...]]:
    """The stem, each stage (the last with the final 1×1 conv), then the head."""
    return stage_groups(self.stage_sizes, ("last",)) + [("head",)]

  def features(self, x: jax.Array) -> jax.Array:
    """Pooled features before the classifier, [B, D]."""
    x = self.stem(x)
    for block in self.blocks:
      x = block(x)
    return self.last(x).mean(axis=(1, 2))

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.head(self.dropout(self.features(x))).astype(jnp.float32)


class InvertedBottleneck(nnx.Module):
  """The forward pass of EfficientNet's MBConv and MobileNetV3's block: optional 1×1 `expand`,
  `depthwise`, optional squeeze-excite `se`, linear `project`, and the shortcut when `residual`
  (through `drop_path` when the family uses stochastic depth, else `drop_path` is None)."""

  def __call__(self, x: jax.Array) -> jax.Array:
    y = x if self.expand is None else self.expand(x)
    y = self.depthwise(y)
    if self.se is not None:
      y = self.se(y)
    y = self.project(y)
    if not self.residual:
      return y
    return x + (y if self.drop_path is None else self.drop_path(y))
