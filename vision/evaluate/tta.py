"""Test-time augmentation: the mean of the probabilities over flipped and shifted views.

    views = tta_views(images, "flip_crops", fill)       # [10, B, H, W, C]
    probs = mean_over_views(model, task.probabilities, images, "flip", fill)   # [B, C]

Modes (`experiments.evaluate --tta=...`, `experiments.predict --tta=...`):
  * `none`: the image as the model was evaluated on it;
  * `flip`: the image and its horizontal mirror (2 views);
  * `flip_crops`: each of those and four crops shifted diagonally by
    `crop_shift(S)` ≈ S/16 px (the corners of the image padded with black by
    that much: torchvision's ten-crop on an image that is already the model's
    size; 10 views).
Every view goes through the model inside the caller's one jitted function,
and the probabilities (the task's: calibrated softmax, sigmoids) are
averaged over the views.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vision.errors import ConfigError

TTA_MODES = ("none", "flip", "flip_crops")


def check_mode(mode: str, flag: str = "--tta") -> str:
  """`mode`, or a ConfigError naming `flag` when it is not one of TTA_MODES."""
  if mode not in TTA_MODES:
    raise ConfigError(f"{flag}={mode} is not a test-time augmentation; choose one of "
                      f"{', '.join(TTA_MODES)}")
  return mode


def crop_shift(size: int) -> int:
  """How far flip_crops shifts an image of `size` px: S/16, at least 1 px."""
  return max(1, int(round(size / 16)))


def tta_views(images: jax.Array, mode: str, fill: np.ndarray) -> jax.Array:
  """[V, B, H, W, C] views of normalised images [B, H, W, C]; `fill` [C] is black, normalised."""
  views = [images]
  if mode in ("flip", "flip_crops"):
    views.append(images[:, :, ::-1])
  if mode == "flip_crops":
    height, width = images.shape[1:3]
    shift = crop_shift(height)
    fill = jnp.asarray(fill, images.dtype)
    for view in list(views):
      padded = jnp.pad(view - fill, ((0, 0), (shift, shift), (shift, shift), (0, 0))) + fill
      for top in (0, 2 * shift):
        for left in (0, 2 * shift):
          views.append(padded[:, top:top + height, left:left + width])
  return jnp.stack(views)


def mean_over_views(forward: Callable[[jax.Array], jax.Array],
                    probabilities: Callable[[jax.Array], jax.Array], images: jax.Array,
                    mode: str, fill: np.ndarray) -> jax.Array:
  """The mean over `mode`'s views of `probabilities(forward(view))`, [B, K]; traceable.

  `probabilities` may return a pytree of [B, K] arrays (raw and calibrated); each is averaged.

  The views run one after another through one compiled model body (`lax.map`):
  each keeps the batch's sharding, and compilation does not grow with the views.
  """
  if mode == "none":
    return probabilities(forward(images))
  views = tta_views(images, mode, fill)
  per_view = jax.lax.map(lambda view: probabilities(forward(view)), views)
  return jax.tree.map(lambda x: x.mean(axis=0), per_view)
