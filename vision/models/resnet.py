"""ResNet-18/34/50/101/152 (He et al. 2016) in Flax NNX, laid out like torchvision's.

    model = create_model("resnet18", ModelOptions(num_classes=10, in_channels=3, image_size=32),
                         rngs=nnx.Rngs(0))

Two stems: the ImageNet stem (7×7/2 conv, 3×3/2 max pool) and, for 28–64 px
inputs, the small-image stem (one 3×3/1 conv, no pooling) that CIFAR-style
ResNets use; `stem='auto'` picks the small one below 64 px. Padding is explicit
and symmetric, as in PyTorch, so torchvision weights map one to one. The last
BatchNorm of each residual branch starts at zero (each block starts as identity).
"""

from __future__ import annotations

from typing import Sequence

from flax import nnx
import jax
import jax.numpy as jnp

from vision.models import MODELS, ModelOptions
from vision.models.normalization import BatchNorm
from vision.models.layers import Conv
from vision.models.torch_import import TORCH_IMPORTERS, StateDict, TorchState, check_source

from vision.models.blocks import he_normal_fan_out as _kernel_init, linear  # noqa: E402


def conv(in_features: int, out_features: int, kernel: int, stride: int = 1, *, dtype,
         rngs: nnx.Rngs) -> Conv:
  pad = kernel // 2
  return Conv(in_features, out_features, (kernel, kernel), (stride, stride),
                  padding=((pad, pad), (pad, pad)), use_bias=False, dtype=dtype,
                  kernel_init=_kernel_init, rngs=rngs)


def batch_norm(features: int, *, zero_init: bool = False, dtype, rngs: nnx.Rngs) -> BatchNorm:
  scale_init = nnx.initializers.zeros if zero_init else nnx.initializers.ones
  return BatchNorm(features, momentum=0.9, epsilon=1e-5, dtype=dtype,
                       scale_init=scale_init, rngs=rngs)


class Downsample(nnx.Module):
  """The projection shortcut: 1×1 conv with stride, then BatchNorm."""

  def __init__(self, in_features: int, out_features: int, stride: int, *, dtype, rngs):
    self.conv = conv(in_features, out_features, 1, stride, dtype=dtype, rngs=rngs)
    self.norm = batch_norm(out_features, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.norm(self.conv(x))


class BasicBlock(nnx.Module):
  expansion = 1

  def __init__(self, in_features: int, features: int, stride: int, *, dtype, rngs):
    self.conv1 = conv(in_features, features, 3, stride, dtype=dtype, rngs=rngs)
    self.bn1 = batch_norm(features, dtype=dtype, rngs=rngs)
    self.conv2 = conv(features, features, 3, dtype=dtype, rngs=rngs)
    self.bn2 = batch_norm(features, zero_init=True, dtype=dtype, rngs=rngs)
    self.downsample = (Downsample(in_features, features, stride, dtype=dtype, rngs=rngs)
                       if stride != 1 or in_features != features else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    shortcut = x if self.downsample is None else self.downsample(x)
    y = nnx.relu(self.bn1(self.conv1(x)))
    return nnx.relu(self.bn2(self.conv2(y)) + shortcut)


class Bottleneck(nnx.Module):
  expansion = 4

  def __init__(self, in_features: int, features: int, stride: int, *, dtype, rngs):
    out_features = features * self.expansion
    self.conv1 = conv(in_features, features, 1, dtype=dtype, rngs=rngs)
    self.bn1 = batch_norm(features, dtype=dtype, rngs=rngs)
    # Stride on the 3×3 conv (ResNet v1.5), as torchvision does.
    self.conv2 = conv(features, features, 3, stride, dtype=dtype, rngs=rngs)
    self.bn2 = batch_norm(features, dtype=dtype, rngs=rngs)
    self.conv3 = conv(features, out_features, 1, dtype=dtype, rngs=rngs)
    self.bn3 = batch_norm(out_features, zero_init=True, dtype=dtype, rngs=rngs)
    self.downsample = (Downsample(in_features, out_features, stride, dtype=dtype, rngs=rngs)
                       if stride != 1 or in_features != out_features else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    shortcut = x if self.downsample is None else self.downsample(x)
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = nnx.relu(self.bn2(self.conv2(y)))
    return nnx.relu(self.bn3(self.conv3(y)) + shortcut)


class ResNet(nnx.Module):

  def __init__(self, block: type[BasicBlock] | type[Bottleneck], stage_sizes: Sequence[int],
               num_classes: int, in_channels: int = 3, *, small_stem: bool = False,
               dropout: float = 0.0, dtype=jnp.float32, rngs: nnx.Rngs):
    self.small_stem = small_stem
    if small_stem:
      self.conv1 = conv(in_channels, 64, 3, 1, dtype=dtype, rngs=rngs)
    else:
      self.conv1 = conv(in_channels, 64, 7, 2, dtype=dtype, rngs=rngs)
    self.bn1 = batch_norm(64, dtype=dtype, rngs=rngs)
    blocks = []
    in_features = 64
    for stage, size in enumerate(stage_sizes):
      features = 64 * 2**stage
      for index in range(size):
        stride = 2 if stage > 0 and index == 0 else 1
        blocks.append(block(in_features, features, stride, dtype=dtype, rngs=rngs))
        in_features = features * block.expansion
    self.blocks = nnx.List(blocks)
    self.stage_sizes = tuple(stage_sizes)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self.head = linear(in_features, num_classes, dtype=dtype, rngs=rngs)

  def layer_groups(self) -> list[tuple[str, ...]]:
    """The stem, each stage, then the head (see `vision.models`)."""
    groups, start = [("conv1", "bn1")], 0
    for size in self.stage_sizes:
      groups.append(tuple(f"blocks.{i}" for i in range(start, start + size)))
      start += size
    return groups + [("head",)]

  def features(self, x: jax.Array) -> jax.Array:
    """Pooled features before the classifier, [B, D]."""
    x = nnx.relu(self.bn1(self.conv1(x)))
    if not self.small_stem:
      x = nnx.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    for block in self.blocks:
      x = block(x)
    return x.mean(axis=(1, 2))

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.head(self.dropout(self.features(x))).astype(jnp.float32)


_VARIANTS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
    "resnet152": (Bottleneck, (3, 8, 36, 3)),
}


def _builder(block, stage_sizes):
  def build(options: ModelOptions, rngs: nnx.Rngs) -> ResNet:
    small = options.stem == "small" or (options.stem == "auto" and options.image_size < 64)
    return ResNet(block, stage_sizes, options.num_classes, options.in_channels,
                  small_stem=small, dropout=options.dropout, dtype=options.compute_dtype,
                  rngs=rngs)
  return build


for _name, (_block, _sizes) in _VARIANTS.items():
  MODELS[_name] = _builder(_block, _sizes)


def import_torch(model: ResNet, state_dict: StateDict, source: str) -> None:
  """torchvision's (and timm's, which uses the same names) `conv1`, `layerS.I...`, `fc`."""
  check_source("resnet", source, ("torchvision", "timm"))
  tensors = TorchState(state_dict, source)
  tensors.conv(model.conv1, "conv1", first=True)
  tensors.norm(model.bn1, "bn1")
  index = 0
  for stage, size in enumerate(model.stage_sizes):
    for position in range(size):
      block, prefix = model.blocks[index], f"layer{stage + 1}.{position}"
      for number in (1, 2, 3) if isinstance(block, Bottleneck) else (1, 2):
        tensors.conv(getattr(block, f"conv{number}"), f"{prefix}.conv{number}")
        tensors.norm(getattr(block, f"bn{number}"), f"{prefix}.bn{number}")
      if block.downsample is not None:
        tensors.conv(block.downsample.conv, f"{prefix}.downsample.0")
        tensors.norm(block.downsample.norm, f"{prefix}.downsample.1")
      index += 1
  tensors.linear(model.head, "fc")
  tensors.finish()


for _name in _VARIANTS:
  TORCH_IMPORTERS[_name] = import_torch
