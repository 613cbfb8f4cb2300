"""PyTorch twins of the framework's models, for speed comparisons and parity tests.

    model = make_torch_model("resnet18", num_classes=10, in_channels=3, image_size=32)

The twins have the same layers, shapes and parameter counts as the NNX models:
torchvision's ResNets (with the same small-image stem rule), MobileNetV2 and
EfficientNet-B0…B7, and timm's ViTs. Needs the `torch` extra: `uv pip install '.[torch]'`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
import torchvision


def _small_cnn(num_classes: int, in_channels: int, image_size: int, widths: Sequence[int],
               hidden: int, dropout: float) -> nn.Module:
  layers: list[nn.Module] = []
  features = in_channels
  for width in widths:
    layers += [nn.Conv2d(features, width, 3, padding=1, bias=False),
               nn.BatchNorm2d(width, momentum=0.1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
    features = width
  side = image_size // 2**len(widths)
  # NHWC flattening order differs from NCHW, which only permutes the hidden layer's rows.
  return nn.Sequential(*layers, nn.Flatten(), nn.Dropout(dropout),
                       nn.Linear(features * side * side, hidden), nn.ReLU(inplace=True),
                       nn.Dropout(dropout), nn.Linear(hidden, num_classes))


# The zoo's ViTs and timm's same-shaped definitions.
_TIMM_VITS = {"vit_ti16": "vit_tiny_patch16_224", "vit_s16": "vit_small_patch16_224",
              "vit_b16": "vit_base_patch16_224"}


def make_torch_model(name: str, num_classes: int, in_channels: int = 3, image_size: int = 224,
                     *, widths: Sequence[int] = (32, 64), hidden: int = 128,
                     dropout: float = 0.0, stem: str = "auto") -> nn.Module:
  if name == "small_cnn":
    return _small_cnn(num_classes, in_channels, image_size, widths, hidden, dropout)
  if name == "mobilenet_v2":
    model = torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes,
                                            dropout=dropout)
    if in_channels != 3:
      model.features[0][0] = nn.Conv2d(in_channels, 32, 3, 2, 1, bias=False)
    return model
  if name.startswith("efficientnet_b") and hasattr(torchvision.models, name):
    # No stochastic depth: ModelOptions.drop_path is 0 unless a config sets it.
    model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes,
                                              dropout=dropout, stochastic_depth_prob=0.0)
    if in_channels != 3:
      stem = model.features[0][0]
      model.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, 3, 2, 1, bias=False)
    return model
  if name in _TIMM_VITS:
    import timm  # pylint: disable=import-outside-toplevel
    return timm.create_model(_TIMM_VITS[name], pretrained=False, num_classes=num_classes,
                             img_size=image_size, in_chans=in_channels, drop_rate=dropout)
  if name not in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
    raise ValueError(f"no PyTorch twin for model {name!r}")
  model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
  if stem == "small" or (stem == "auto" and image_size < 64):
    model.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
  elif in_channels != 3:
    model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
  if dropout:
    model.fc = nn.Sequential(nn.Dropout(dropout), model.fc)
  return model


def count_parameters(model: torch.nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())
