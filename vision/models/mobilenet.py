"""MobileNetV2 (Sandler et al. 2018) and MobileNetV3 small/large (Howard et al. 2019) in Flax NNX.

    model = create_model("mobilenet_v2", ModelOptions(num_classes=1000), rngs=nnx.Rngs(0))
    logits = model(images)                    # images: float [B, H, W, 3], any H, W ≥ 32

Laid out like torchvision's models (same widths, kernels, strides, BatchNorm
epsilons and PyTorch's symmetric padding), so torchvision and timm weights map
one to one (vision/models/torch_import_cnn.py). The networks end in global
average pooling, so `image_size` does not change the architecture;
`in_channels` sets the stem's input channels. `model.dropout` is the dropout
before the classifier (torchvision trains with 0.2).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from flax import nnx
import jax
import jax.numpy as jnp

from vision.models import MODELS, ModelOptions
from vision.models.torch_import import TORCH_IMPORTERS, StateDict, TorchState, check_source
from vision.models.blocks import (ConvNormAct, InvertedBottleneck, PooledConvNet, SqueezeExcite,
                                  batch_norm, conv, hard_sigmoid, hard_swish, identity, linear,
                                  make_divisible, stage_groups)

# --------------------------------------------------------------------------- V2


class InvertedResidual(nnx.Module):
  """MobileNetV2 block: 1×1 expand, 3×3 depthwise, 1×1 linear projection, residual if shapes allow."""

  def __init__(self, in_features: int, out_features: int, stride: int, expand_ratio: int, *,
               dtype, rngs: nnx.Rngs):
    hidden = int(round(in_features * expand_ratio))
    self.expand = (ConvNormAct(in_features, hidden, 1, activation=jax.nn.relu6, dtype=dtype,
                               rngs=rngs) if expand_ratio != 1 else None)
    self.depthwise = ConvNormAct(hidden, hidden, 3, stride, groups=hidden,
                                 activation=jax.nn.relu6, dtype=dtype, rngs=rngs)
    self.project = conv(hidden, out_features, 1, dtype=dtype, rngs=rngs)
    self.project_norm = batch_norm(out_features, dtype=dtype, rngs=rngs)
    self.residual = stride == 1 and in_features == out_features

  def __call__(self, x: jax.Array) -> jax.Array:
    y = x if self.expand is None else self.expand(x)
    y = self.project_norm(self.project(self.depthwise(y)))
    return x + y if self.residual else y


# (expand ratio, channels, repeats, stride) per stage, as in the paper's Table 2.
_V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
              (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(PooledConvNet):

  def __init__(self, num_classes: int, in_channels: int = 3, *, width: float = 1.0,
               dropout: float = 0.0, dtype=jnp.float32, rngs: nnx.Rngs):
    features = make_divisible(32 * width)
    self.stem = ConvNormAct(in_channels, features, 3, 2, activation=jax.nn.relu6, dtype=dtype,
                            rngs=rngs)
    blocks, self.stage_sizes = [], tuple(n for _, _, n, _ in _V2_STAGES)
    for expand_ratio, channels, repeats, stride in _V2_STAGES:
      out_features = make_divisible(channels * width)
      for index in range(repeats):
        blocks.append(InvertedResidual(features, out_features, stride if index == 0 else 1,
                                       expand_ratio, dtype=dtype, rngs=rngs))
        features = out_features
    self.blocks = nnx.List(blocks)
    last = make_divisible(1280 * max(1.0, width))
    self.last = ConvNormAct(features, last, 1, activation=jax.nn.relu6, dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self.head = linear(last, num_classes, dtype=dtype, rngs=rngs)


def _build_v2(options: ModelOptions, rngs: nnx.Rngs) -> MobileNetV2:
  return MobileNetV2(options.num_classes, options.in_channels, dropout=options.dropout,
                     dtype=options.compute_dtype, rngs=rngs)


MODELS["mobilenet_v2"] = _build_v2


# --------------------------------------------------------------------------- V3


@dataclasses.dataclass(frozen=True)
class BlockV3:
  """One MobileNetV3 bottleneck: the rows of the paper's Tables 1 and 2."""
  kernel: int
  expanded: int
  out_features: int
  squeeze_excite: bool
  hard_swish: bool
  stride: int


_V3_LARGE = (
    BlockV3(3, 16, 16, False, False, 1), BlockV3(3, 64, 24, False, False, 2),
    BlockV3(3, 72, 24, False, False, 1), BlockV3(5, 72, 40, True, False, 2),
    BlockV3(5, 120, 40, True, False, 1), BlockV3(5, 120, 40, True, False, 1),
    BlockV3(3, 240, 80, False, True, 2), BlockV3(3, 200, 80, False, True, 1),
    BlockV3(3, 184, 80, False, True, 1), BlockV3(3, 184, 80, False, True, 1),
    BlockV3(3, 480, 112, True, True, 1), BlockV3(3, 672, 112, True, True, 1),
    BlockV3(5, 672, 160, True, True, 2), BlockV3(5, 960, 160, True, True, 1),
    BlockV3(5, 960, 160, True, True, 1))
_V3_SMALL = (
    BlockV3(3, 16, 16, True, False, 2), BlockV3(3, 72, 24, False, False, 2),
    BlockV3(3, 88, 24, False, False, 1), BlockV3(5, 96, 40, True, True, 2),
    BlockV3(5, 240, 40, True, True, 1), BlockV3(5, 240, 40, True, True, 1),
    BlockV3(5, 120, 48, True, True, 1), BlockV3(5, 144, 48, True, True, 1),
    BlockV3(5, 288, 96, True, True, 2), BlockV3(5, 576, 96, True, True, 1),
    BlockV3(5, 576, 96, True, True, 1))
_V3_EPS = 1e-3


class InvertedResidualV3(InvertedBottleneck):
  """MobileNetV3 bottleneck: expand, depthwise, optional hard-sigmoid SE, linear projection."""

  def __init__(self, in_features: int, spec: BlockV3, *, dtype, rngs: nnx.Rngs):
    activation = hard_swish if spec.hard_swish else jax.nn.relu
    common = dict(eps=_V3_EPS, dtype=dtype, rngs=rngs)
    self.expand = (ConvNormAct(in_features, spec.expanded, 1, activation=activation, **common)
                   if spec.expanded != in_features else None)
    self.depthwise = ConvNormAct(spec.expanded, spec.expanded, spec.kernel, spec.stride,
                                 groups=spec.expanded, activation=activation, **common)
    self.se = (SqueezeExcite(spec.expanded, make_divisible(spec.expanded // 4), gate=hard_sigmoid,
                             dtype=dtype, rngs=rngs) if spec.squeeze_excite else None)
    self.project = ConvNormAct(spec.expanded, spec.out_features, 1, activation=identity, **common)
    self.residual = spec.stride == 1 and in_features == spec.out_features
    self.drop_path = None


class MobileNetV3(nnx.Module):

  def __init__(self, specs: Sequence[BlockV3], last_features: int, num_classes: int,
               in_channels: int = 3, *, dropout: float = 0.0, dtype=jnp.float32,
               rngs: nnx.Rngs):
    common = dict(eps=_V3_EPS, dtype=dtype, rngs=rngs)
    self.stem = ConvNormAct(in_channels, 16, 3, 2, activation=hard_swish, **common)
    blocks, features = [], 16
    for spec in specs:
      blocks.append(InvertedResidualV3(features, spec, dtype=dtype, rngs=rngs))
      features = spec.out_features
    self.blocks = nnx.List(blocks)
    # Stages end where the resolution halves next.
    starts = [i for i, spec in enumerate(specs) if spec.stride == 2 and i > 0] + [len(specs)]
    self.stage_sizes = tuple(b - a for a, b in zip([0] + starts[:-1], starts))
    self.last = ConvNormAct(features, 6 * features, 1, activation=hard_swish, **common)
    self.pre_head = linear(6 * features, last_features, dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self.head = linear(last_features, num_classes, dtype=dtype, rngs=rngs)

  def layer_groups(self) -> list[tuple[str, ...]]:
    """The stem, each resolution's blocks (the last with the 1×1 conv and the pre-head
    linear layer), then the head."""
    return stage_groups(self.stage_sizes, ("last", "pre_head")) + [("head",)]

  def features(self, x: jax.Array) -> jax.Array:
    """The hidden layer before the classifier (pooled, linear, hard-swish), [B, 1024 or 1280]."""
    x = self.stem(x)
    for block in self.blocks:
      x = block(x)
    return hard_swish(self.pre_head(self.last(x).mean(axis=(1, 2))))

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.head(self.dropout(self.features(x))).astype(jnp.float32)


def _v3_builder(specs: Sequence[BlockV3], last_features: int):
  def build(options: ModelOptions, rngs: nnx.Rngs) -> MobileNetV3:
    return MobileNetV3(specs, last_features, options.num_classes, options.in_channels,
                       dropout=options.dropout, dtype=options.compute_dtype, rngs=rngs)
  return build


# Smallest first: the registry's order within a family (vision/models/__init__.py).
MODELS["mobilenet_v3_small"] = _v3_builder(_V3_SMALL, 1024)
MODELS["mobilenet_v3_large"] = _v3_builder(_V3_LARGE, 1280)


# ------------------------------------------------------------------- weight import

def _conv_norm(tensors: TorchState, module: ConvNormAct, prefix: str, first: bool = False) -> None:
  tensors.conv(module.conv, f"{prefix}.0", first=first)
  tensors.norm(module.norm, f"{prefix}.1")


def import_v2(model: MobileNetV2, state_dict: StateDict, source: str) -> None:
  """torchvision's `mobilenet_v2` state dict (`features.N...`, `classifier.1`)."""
  check_source("mobilenet_v2", source, ("torchvision",))
  tensors = TorchState(state_dict, source)
  _conv_norm(tensors, model.stem, "features.0", first=True)
  for index, block in enumerate(model.blocks):
    prefix, layer = f"features.{index + 1}.conv", 0
    if block.expand is not None:
      _conv_norm(tensors, block.expand, f"{prefix}.0")
      layer = 1
    _conv_norm(tensors, block.depthwise, f"{prefix}.{layer}")
    tensors.conv(block.project, f"{prefix}.{layer + 1}")
    tensors.norm(block.project_norm, f"{prefix}.{layer + 2}")
  _conv_norm(tensors, model.last, f"features.{len(model.blocks) + 1}")
  tensors.linear(model.head, "classifier.1")
  tensors.finish()


TORCH_IMPORTERS["mobilenet_v2"] = import_v2


def import_v3(model: MobileNetV3, state_dict: StateDict, source: str) -> None:
  """torchvision's `mobilenet_v3_*` (`features.N.block.J`, `classifier.0` and `.3`)."""
  check_source("mobilenet_v3", source, ("torchvision",))
  tensors = TorchState(state_dict, source)
  _conv_norm(tensors, model.stem, "features.0", first=True)
  for index, block in enumerate(model.blocks):
    prefix, layer = f"features.{index + 1}.block", 0
    for module in (block.expand, block.depthwise, block.se, block.project):
      if isinstance(module, SqueezeExcite):
        tensors.conv(module.reduce, f"{prefix}.{layer}.fc1")
        tensors.conv(module.expand, f"{prefix}.{layer}.fc2")
      elif module is not None:
        _conv_norm(tensors, module, f"{prefix}.{layer}")
      layer += module is not None
  _conv_norm(tensors, model.last, f"features.{len(model.blocks) + 1}")
  tensors.linear(model.pre_head, "classifier.0")
  tensors.linear(model.head, "classifier.3")
  tensors.finish()


TORCH_IMPORTERS["mobilenet_v3_large"] = import_v3
TORCH_IMPORTERS["mobilenet_v3_small"] = import_v3
