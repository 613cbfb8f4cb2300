"""ConvNeXt-T/S/B (Liu et al. 2022) in Flax NNX, laid out like timm's.

    model = create_model("convnext_tiny", ModelOptions(num_classes=10, image_size=64),
                         rngs=nnx.Rngs(0))
    logits = model(images)                    # images: [B, 64, 64, 3], at least 32 px

A 4×4/4 patchify stem, four stages (each after the first opens with LayerNorm
and a 2×2/2 conv), blocks of 7×7 depthwise conv → LayerNorm → MLP (4×, GELU)
→ layer scale (γ, starting at 1e-6) → stochastic depth + residual, then global
average pooling, a LayerNorm and the classifier. Widths and depths:
tiny 96–768 (3, 3, 9, 3), small 96–768 (3, 3, 27, 3), base 128–1024 (3, 3, 27, 3).
`ModelOptions.drop_path` is the last block's stochastic-depth rate (rising
linearly from 0, counted over all blocks); `ModelOptions.dropout` is applied
before the head. Imports from timm (`convnext_*`) and torchvision (`convnext_*`).
"""

from __future__ import annotations

import re
from typing import Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from vision.errors import ConfigError
from vision.models import MODELS, ModelOptions
from vision.models import torch_import
from vision.models.layers import Conv
from vision.models.torch_import import StateDict, TorchState, assign

_init = nnx.initializers.truncated_normal(stddev=0.02)
# name: (widths, depths)
_VARIANTS = {
    "convnext_tiny": ((96, 192, 384, 768), (3, 3, 9, 3)),
    "convnext_small": ((96, 192, 384, 768), (3, 3, 27, 3)),
    "convnext_base": ((128, 256, 512, 1024), (3, 3, 27, 3)),
}


def layer_norm(features: int, *, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
  # Over channels (the last axis in NHWC): PyTorch's LayerNorm2d. Two-pass variance, as PyTorch.
  return nnx.LayerNorm(features, epsilon=1e-6, use_fast_variance=False, dtype=dtype, rngs=rngs)


def conv(in_features: int, out_features: int, kernel: int, stride: int = 1, *, groups: int = 1,
         dtype, rngs: nnx.Rngs) -> Conv:
  pad = (kernel - stride) // 2
  return Conv(in_features, out_features, (kernel, kernel), (stride, stride),
              padding=((pad, pad), (pad, pad)), feature_group_count=groups, kernel_init=_init,
              dtype=dtype, rngs=rngs)


class Stem(nnx.Module):

  def __init__(self, in_channels: int, features: int, *, dtype, rngs: nnx.Rngs):
    self.conv = conv(in_channels, features, 4, 4, dtype=dtype, rngs=rngs)
    self.norm = layer_norm(features, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.norm(self.conv(x))


class Downsample(nnx.Module):

  def __init__(self, in_features: int, out_features: int, *, dtype, rngs: nnx.Rngs):
    self.norm = layer_norm(in_features, dtype=dtype, rngs=rngs)
    self.conv = conv(in_features, out_features, 2, 2, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.conv(self.norm(x))


class Mlp(nnx.Module):

  def __init__(self, dim: int, hidden: int, *, dtype, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(dim, hidden, kernel_init=_init, dtype=dtype, rngs=rngs)
    self.fc2 = nnx.Linear(hidden, dim, kernel_init=_init, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    # Applied to x [..., C] as rows [N, C] (the same values): TFLite's converter cannot give a
    # batch matmul a 4-D output, so a static-batch export of a [1, H, W, C] Linear fails.
    rows = x.reshape(-1, x.shape[-1])
    return self.fc2(jax.nn.gelu(self.fc1(rows), approximate=False)).reshape(*x.shape[:-1], -1)


class Block(nnx.Module):
  """x + drop_path(γ · mlp(norm(dwconv7(x))))."""

  def __init__(self, dim: int, *, drop_path_rate: float = 0.0, layer_scale: float = 1e-6,
               dtype, rngs: nnx.Rngs):
    self.conv_dw = conv(dim, dim, 7, groups=dim, dtype=dtype, rngs=rngs)
    self.norm = layer_norm(dim, dtype=dtype, rngs=rngs)
    self.mlp = Mlp(dim, 4 * dim, dtype=dtype, rngs=rngs)
    self.gamma = nnx.Param(jnp.full((dim,), layer_scale, jnp.float32))
    # Stochastic depth: one mask entry per example, broadcast over H, W, C.
    self.drop_path = nnx.Dropout(drop_path_rate, broadcast_dims=(1, 2, 3), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.mlp(self.norm(self.conv_dw(x))) * self.gamma[...].astype(x.dtype)
    return x + self.drop_path(y)


class Stage(nnx.Module):

  def __init__(self, in_features: int, features: int, depth: int, rates: Sequence[float], *,
               dtype, rngs: nnx.Rngs):
    self.downsample = (Downsample(in_features, features, dtype=dtype, rngs=rngs)
                       if in_features != features else None)
    self.blocks = nnx.List([Block(features, drop_path_rate=float(rate), dtype=dtype, rngs=rngs)
                            for rate in rates[:depth]])

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.downsample is not None:
      x = self.downsample(x)
    for block in self.blocks:
      x = block(x)
    return x


class ConvNeXt(nnx.Module):
  """See the module docstring."""

  def __init__(self, widths: Sequence[int], depths: Sequence[int], *, num_classes: int,
               in_channels: int = 3, image_size: int = 224, dropout: float = 0.0,
               drop_path_rate: float = 0.0, dtype=jnp.float32, rngs: nnx.Rngs):
    if image_size < 32:
      raise ConfigError(
          f"ConvNeXt downsamples 32×, so it needs images of at least 32 px, got {image_size} "
          "(set data.image_size)")
    self.stem = Stem(in_channels, widths[0], dtype=dtype, rngs=rngs)
    rates = np.linspace(0.0, drop_path_rate, sum(depths))
    stages, start, in_features = [], 0, widths[0]
    for features, depth in zip(widths, depths):
      stages.append(Stage(in_features, features, depth, rates[start:start + depth],
                          dtype=dtype, rngs=rngs))
      start, in_features = start + depth, features
    self.stages = nnx.List(stages)
    self.norm = layer_norm(widths[-1], dtype=dtype, rngs=rngs)
    self.head_drop = nnx.Dropout(dropout, rngs=rngs)
    self.head = nnx.Linear(widths[-1], num_classes, kernel_init=_init, dtype=dtype, rngs=rngs)

  def layer_groups(self) -> list[tuple[str, ...]]:
    """The stem, each stage, the final norm, then the head (see `vision.models`)."""
    return ([("stem",)] + [(f"stages.{i}",) for i in range(len(self.stages))] +
            [("norm",), ("head",)])

  def features(self, x: jax.Array) -> jax.Array:
    """Globally pooled features after the final LayerNorm, [B, D]."""
    x = self.stem(x)
    for stage in self.stages:
      x = stage(x)
    return self.norm(x.mean(axis=(1, 2)))

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.head(self.head_drop(self.features(x))).astype(jnp.float32)


# ----------------------------------------------------------------- PyTorch import

def _torchvision_to_timm(name: str) -> str:
  """torchvision's `ConvNeXt` tensor name in timm's naming (unknown names pass through)."""
  fixed = {"features.0.0": "stem.0", "features.0.1": "stem.1", "classifier.0": "head.norm",
           "classifier.2": "head.fc"}
  stem, _, kind = name.rpartition(".")
  if stem in fixed:
    return f"{fixed[stem]}.{kind}"
  if match := re.fullmatch(r"features\.(\d+)\.(\d+)\.layer_scale", name):
    feature, block = map(int, match.groups())
    return f"stages.{(feature - 1) // 2}.blocks.{block}.gamma" if feature % 2 else name
  if match := re.fullmatch(r"features\.(\d+)\.(\d+)(?:\.block\.(\d+))?", stem):
    feature, index, layer = match.groups()
    feature = int(feature)
    if feature % 2 == 0 and layer is None:  # features.2k = stage k's downsample (norm, conv)
      return f"stages.{feature // 2}.downsample.{index}.{kind}"
    layers = {"0": "conv_dw", "2": "norm", "3": "mlp.fc1", "5": "mlp.fc2"}
    if feature % 2 and layer in layers:
      return f"stages.{(feature - 1) // 2}.blocks.{index}.{layers[layer]}.{kind}"
  return name


def load_timm_state(model: ConvNeXt, state_dict: StateDict, source: str = "timm") -> None:
  """Copies a state dict in timm's naming into `model`."""
  tensors = TorchState(state_dict, source)
  tensors.conv(model.stem.conv, "stem.0")
  tensors.layer_norm(model.stem.norm, "stem.1")
  for s, stage in enumerate(model.stages):
    if stage.downsample is not None:
      tensors.layer_norm(stage.downsample.norm, f"stages.{s}.downsample.0")
      tensors.conv(stage.downsample.conv, f"stages.{s}.downsample.1")
    for b, block in enumerate(stage.blocks):
      prefix = f"stages.{s}.blocks.{b}"
      tensors.conv(block.conv_dw, f"{prefix}.conv_dw")
      tensors.layer_norm(block.norm, f"{prefix}.norm")
      tensors.linear(block.mlp.fc1, f"{prefix}.mlp.fc1")
      tensors.linear(block.mlp.fc2, f"{prefix}.mlp.fc2")
      assign(block.gamma, tensors.take(f"{prefix}.gamma").reshape(-1), f"{prefix}.gamma")
  tensors.layer_norm(model.norm, "head.norm")
  tensors.linear(model.head, "head.fc")
  tensors.finish()


_CONVERTERS = {
    "timm": dict,
    "torchvision": lambda state: {_torchvision_to_timm(k): v for k, v in state.items()},
}


def _importer(name: str):
  def import_state(model: ConvNeXt, state_dict: StateDict, source: str) -> None:
    torch_import.check_source(name, source, tuple(_CONVERTERS))
    load_timm_state(model, _CONVERTERS[source](state_dict), source)
  return import_state


def _builder(widths: Sequence[int], depths: Sequence[int]):
  def build(options: ModelOptions, rngs: nnx.Rngs) -> ConvNeXt:
    return ConvNeXt(widths, depths, num_classes=options.num_classes,
                    in_channels=options.in_channels, image_size=options.image_size,
                    dropout=options.dropout, drop_path_rate=options.drop_path,
                    dtype=options.compute_dtype, rngs=rngs)
  return build


for _name, (_widths, _depths) in _VARIANTS.items():
  MODELS[_name] = _builder(_widths, _depths)
  torch_import.TORCH_IMPORTERS[_name] = _importer(_name)
