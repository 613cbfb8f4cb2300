"""A small CNN for 28–64 px images: the quickstart's model.

    model = SmallCNN(num_classes=10, in_channels=1, widths=(32, 64), hidden=128,
                     image_size=28, rngs=nnx.Rngs(0))

Each entry of `widths` is a stage: 3×3 conv, BatchNorm, ReLU, 2×2 max pooling.
The head flattens the last feature map (keeping where things are, which
matters for 28 px clothing), then a hidden ReLU layer and the classifier, with
dropout before each.
"""

from __future__ import annotations

from typing import Sequence

from flax import nnx
import jax
import jax.numpy as jnp

from vision.models import MODELS, ModelOptions
from vision.models.normalization import BatchNorm
from vision.models.layers import Conv, max_pool


class ConvBNReLU(nnx.Module):

  def __init__(self, in_features: int, out_features: int, *, dtype, rngs: nnx.Rngs):
    self.conv = Conv(in_features, out_features, (3, 3), padding=((1, 1), (1, 1)),
                         use_bias=False, dtype=dtype, rngs=rngs)
    self.norm = BatchNorm(out_features, momentum=0.9, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return nnx.relu(self.norm(self.conv(x)))


class SmallCNN(nnx.Module):

  def __init__(self, num_classes: int, in_channels: int, widths: Sequence[int] = (32, 64), *,
               hidden: int = 128, image_size: int = 28, dropout: float = 0.0,
               dtype=jnp.float32, rngs: nnx.Rngs):
    stages = []
    features = in_channels
    for width in widths:
      stages.append(ConvBNReLU(features, width, dtype=dtype, rngs=rngs))
      features = width
    self.stages = nnx.List(stages)
    side = image_size // 2**len(widths)
    if side < 1:
      raise ValueError(f"{len(widths)} pooling stages need images of at least "
                       f"{2**len(widths)} px, got {image_size}")
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self.hidden = nnx.Linear(features * side * side, hidden, dtype=dtype, rngs=rngs)
    self.head = nnx.Linear(hidden, num_classes, dtype=dtype, rngs=rngs)

  def layer_groups(self) -> list[tuple[str, ...]]:
    """Each conv stage, the hidden layer, then the head (see `vision.models`)."""
    return [(f"stages.{i}",) for i in range(len(self.stages))] + [("hidden",), ("head",)]

  def features(self, x: jax.Array) -> jax.Array:
    """The hidden layer's activations, [B, hidden]."""
    for stage in self.stages:
      x = max_pool(stage(x), (2, 2))
    x = self.dropout(x.reshape(x.shape[0], -1))
    return nnx.relu(self.hidden(x))

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.head(self.dropout(self.features(x))).astype(jnp.float32)


def _build(options: ModelOptions, rngs: nnx.Rngs) -> SmallCNN:
  return SmallCNN(options.num_classes, options.in_channels, options.widths,
                  hidden=options.hidden, image_size=options.image_size,
                  dropout=options.dropout, dtype=options.compute_dtype, rngs=rngs)


MODELS["small_cnn"] = _build
