"""The model registry: every architecture is created by name from the config.

    model = create_model("resnet18", ModelOptions(num_classes=10, in_channels=1, image_size=28),
                         rngs=nnx.Rngs(0))
    logits = model(images)            # images: float [B, H, W, C]

A model file registers its builders in `MODELS` (a plain dict, name → builder),
the variants of one family (one builder function) smallest first;
`create_model` is the only way the rest of the framework makes a model.

Every model has the same three entry points, which transfer learning,
feature caching and weight import rely on:
  * `model.head` — the final classifier (an `nnx.Linear`), replaced when the
    number of classes changes;
  * `model.features(images)` — pooled features before the classifier, [B, D];
  * `model.layer_groups()` — the parameters in depth order, input first: a
    list of groups, each a tuple of dotted attribute paths ("blocks.3"),
    the last group being `("head",)`. Every parameter lies in exactly one group.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from flax import nnx
import jax
import jax.numpy as jnp

from vision.errors import ConfigError
from vision.models import layers


@dataclasses.dataclass(frozen=True)
class ModelOptions:
  """What a builder may use; each family reads the fields that concern it."""
  num_classes: int
  in_channels: int = 3
  image_size: int = 224
  dtype: str = "float32"
  dropout: float = 0.0
  drop_path: float = 0.0
  widths: tuple[int, ...] = (32, 64)
  hidden: int = 128
  stem: str = "auto"
  # How convolutions are lowered: 'auto', 'matmul' or 'lax' (see vision/models/layers.py).
  conv_impl: str = "auto"
  # Learned log-variances the head carries (`head.log_variance`) for a multi-task objective
  # with uncertainty weighting (vision/tasks/multi_task.py); 0: none.
  uncertainty_weights: int = 0

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)


Builder = Callable[[ModelOptions, nnx.Rngs], nnx.Module]
MODELS: dict[str, Builder] = {}


def probabilities(model: nnx.Module, images: jax.Array) -> jax.Array:
  """Class probabilities (float32) for a batch of images."""
  return jax.nn.softmax(model(images).astype(jnp.float32))


def create_model(name: str, options: ModelOptions, *, rngs: nnx.Rngs) -> nnx.Module:
  if name not in MODELS:
    raise ConfigError(
        f"config key 'model.name' is {name!r}; known models: {', '.join(sorted(MODELS))}")
  if options.conv_impl not in layers.CONV_IMPLS:
    raise ConfigError(f"config key 'model.conv_impl' is {options.conv_impl!r}; expected one of "
                      f"{', '.join(layers.CONV_IMPLS)}")
  model = layers.set_conv_impl(MODELS[name](options, rngs), options.conv_impl)
  if options.uncertainty_weights:
    model.head.log_variance = nnx.Param(jnp.zeros((options.uncertainty_weights,), jnp.float32))
  return model


# Importing the families fills MODELS.
from vision.models import convnext, efficientnet, mobilenet, resnet, small_cnn, vit  # noqa: E402,F401  pylint: disable=wrong-import-position
