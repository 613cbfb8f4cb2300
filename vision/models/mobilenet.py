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

from typing import Sequence

from flax import nnx
import jax
import jax.numpy as jnp

from vision.models import MODELS, ModelOptions
from vision.models.torch_import import TORCH_IMPORTERS, StateDict, TorchState, check_source
from vision.models.blocks import ConvNormAct, batch_norm, conv, make_divisible

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


class MobileNetV2(nnx.Module):

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
    self.head = nnx.Linear(last, num_classes, dtype=dtype, rngs=rngs)

  def layer_groups(self) -> list[tuple[str, ...]]:
    """The stem, each stage (the last with the 1×1 conv to 1280), then the head."""
    return _stage_groups(self.stage_sizes, ("last",)) + [("head",)]

  def features(self, x: jax.Array) -> jax.Array:
    """Pooled features before the classifier, [B, 1280]."""
    x = self.stem(x)
    for block in self.blocks:
      x = block(x)
    return self.last(x).mean(axis=(1, 2))

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.head(self.dropout(self.features(x))).astype(jnp.float32)


def _stage_groups(stage_sizes: Sequence[int], tail: tuple[str, ...]) -> list[tuple[str, ...]]:
  """[('stem',), blocks of stage 1, ..., blocks of the last stage + tail]."""
  groups, start = [("stem",)], 0
  for size in stage_sizes:
    groups.append(tuple(f"blocks.{i}" for i in range(start, start + size)))
    start += size
  groups[-1] += tail
  return groups


def _build_v2(options: ModelOptions, rngs: nnx.Rngs) -> MobileNetV2:
  return MobileNetV2(options.num_classes, options.in_channels, dropout=options.dropout,
                     dtype=options.compute_dtype, rngs=rngs)


MODELS["mobilenet_v2"] = _build_v2


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
