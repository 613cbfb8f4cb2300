"""Training augmentation: host-side batch ops for grain, and mixup/cutmix on device.

    batch = HostAugment.from_config(config.data).random_map(batch, rng)   # inside grain
    transform = device_transform(config.data, task.dense_targets)        # for Steps.create
    batch = transform(batch, rng)     # under jit, sharded: mixed images + soft 'targets'

Host ops work on a whole uint8 batch [B, H, W, C] (vectorised where the op
allows, per image with PIL where it does not), seeded by grain's per-batch
generator, so a run is repeatable and resumes exactly. Config keys under
`data.` (vision/config.py): random_resized_crop (+ rrc_scale, rrc_ratio),
flip / vflip, rotation (degrees), color_jitter (strength), randaugment_ops +
randaugment_magnitude, mixup_alpha, cutmix_alpha.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import grain
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageEnhance, ImageOps

# ------------------------------------------------------------------ host ops


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator,
                            scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
  """(top, left, h, w) of a crop covering a random area fraction and aspect ratio (Inception)."""
  area = height * width
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  side = min(height, width)  # fall back to the centre square, as torchvision does
  return (height - side) // 2, (width - side) // 2, side, side


def _pil(image: np.ndarray) -> Image.Image:
  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _array(pil: Image.Image, channels: int) -> np.ndarray:
  array = np.asarray(pil)
  return array[..., None] if channels == 1 and array.ndim == 2 else array


def random_resized_crop(image: np.ndarray, rng: np.random.Generator, scale=(0.08, 1.0),
                        ratio=(3 / 4, 4 / 3)) -> np.ndarray:
  """A random crop resized (bilinear) back to the image's own size."""
  height, width, channels = image.shape
  top, left, h, w = random_resized_crop_box(height, width, rng, scale, ratio)
  crop = _pil(image[top:top + h, left:left + w])
  return _array(crop.resize((width, height), Image.BILINEAR), channels)


def rotate(image: np.ndarray, degrees: float) -> np.ndarray:
  """Rotation counter-clockwise by `degrees` about the centre, same size, black corners."""
  if degrees % 90 == 0 and image.shape[0] == image.shape[1]:
    return np.ascontiguousarray(np.rot90(image, k=int(degrees // 90) % 4))
  rotated = _pil(image).rotate(degrees, resample=Image.BILINEAR)
  return _array(rotated, image.shape[-1])


def flip(images: np.ndarray, chosen: np.ndarray, axis: int) -> np.ndarray:
  """Flips the images where `chosen` along `axis` (2: horizontal, 1: vertical) of [B, H, W, C]."""
  return np.where(chosen[:, None, None, None], np.flip(images, axis=axis), images)


def color_jitter(images: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
  """Brightness, contrast and saturation factors, each uniform in [1 - s, 1 + s] per image."""
  count = len(images)
  low, high = max(0.0, 1 - strength), 1 + strength
  brightness, contrast, saturation = rng.uniform(low, high, size=(3, count, 1, 1, 1))
  x = images.astype(np.float32) * brightness
  mean = x.mean(axis=(1, 2, 3), keepdims=True)
  x = (x - mean) * contrast + mean
  if images.shape[-1] == 3:
    grey = x @ np.array([0.299, 0.587, 0.114], np.float32)
    x = (x - grey[..., None]) * saturation + grey[..., None]
  return np.clip(np.round(x), 0, 255).astype(np.uint8)


# RandAugment (Cubuk et al. 2020): each op maps (PIL image, magnitude in [0, 1], sign) → image.
def _affine(image, matrix):
  return image.transform(image.size, Image.AFFINE, matrix, resample=Image.BILINEAR)


_RANDAUGMENT_OPS: dict[str, Callable[[Image.Image, float, float], Image.Image]] = {
    "identity": lambda im, m, s: im,
    "autocontrast": lambda im, m, s: ImageOps.autocontrast(im),
    "equalize": lambda im, m, s: ImageOps.equalize(im),
    "rotate": lambda im, m, s: im.rotate(s * 30 * m, resample=Image.BILINEAR),
    "solarize": lambda im, m, s: ImageOps.solarize(im, int(256 - 256 * m)),
    "color": lambda im, m, s: ImageEnhance.Color(im).enhance(1 + s * 0.9 * m),
    "posterize": lambda im, m, s: ImageOps.posterize(im, max(1, 8 - int(4 * m))),
    "contrast": lambda im, m, s: ImageEnhance.Contrast(im).enhance(1 + s * 0.9 * m),
    "brightness": lambda im, m, s: ImageEnhance.Brightness(im).enhance(1 + s * 0.9 * m),
    "sharpness": lambda im, m, s: ImageEnhance.Sharpness(im).enhance(1 + s * 0.9 * m),
    "shear_x": lambda im, m, s: _affine(im, (1, s * 0.3 * m, 0, 0, 1, 0)),
    "shear_y": lambda im, m, s: _affine(im, (1, 0, 0, s * 0.3 * m, 1, 0)),
    "translate_x": lambda im, m, s: _affine(im, (1, 0, s * 0.45 * m * im.size[0], 0, 1, 0)),
    "translate_y": lambda im, m, s: _affine(im, (1, 0, 0, 0, 1, s * 0.45 * m * im.size[1])),
}
RANDAUGMENT_OPS = tuple(_RANDAUGMENT_OPS)


def apply_op(image: np.ndarray, name: str, magnitude: float, sign: float = 1.0) -> np.ndarray:
  """One RandAugment op at `magnitude` in [0, 1] (10 on the paper's scale of 0-10 is 1.0)."""
  return _array(_RANDAUGMENT_OPS[name](_pil(image), magnitude, sign), image.shape[-1])


def rand_augment(image: np.ndarray, rng: np.random.Generator, num_ops: int,
                 magnitude: int) -> np.ndarray:
  """`num_ops` ops drawn uniformly, each at `magnitude` (0-10) with a random sign."""
  for index in rng.integers(0, len(RANDAUGMENT_OPS), size=num_ops):
    sign = 1.0 if rng.random() < 0.5 else -1.0
    image = apply_op(image, RANDAUGMENT_OPS[index], magnitude / 10, sign)
  return image


@dataclasses.dataclass(frozen=True)
class HostAugment(grain.transforms.RandomMap):
  """The host-side augmentations of `config.data`, on a uint8 batch; grain seeds `rng`."""
  random_resized_crop: bool = False
  rrc_scale: tuple[float, float] = (0.08, 1.0)
  rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3)
  vflip: bool = False
  rotation: float = 0.0
  randaugment_ops: int = 0
  randaugment_magnitude: int = 9
  color_jitter: float = 0.0

  @classmethod
  def from_config(cls, data_config) -> "HostAugment | None":
    augment = cls(
        data_config.random_resized_crop, tuple(data_config.rrc_scale),
        tuple(data_config.rrc_ratio), data_config.vflip, float(data_config.rotation),
        data_config.randaugment_ops, data_config.randaugment_magnitude,
        float(data_config.color_jitter))
    return augment if augment.active else None

  @property
  def active(self) -> bool:
    return bool(self.random_resized_crop or self.vflip or self.rotation or self.randaugment_ops
                or self.color_jitter)

  def random_map(self, batch: dict, rng: np.random.Generator) -> dict:
    images = batch["image"]
    count = len(images)
    if self.random_resized_crop:
      images = np.stack([random_resized_crop(im, rng, self.rrc_scale, self.rrc_ratio)
                         for im in images])
    if self.vflip:
      images = flip(images, rng.random(count) < 0.5, axis=1)
    if self.rotation:
      angles = rng.uniform(-self.rotation, self.rotation, size=count)
      images = np.stack([rotate(im, a) for im, a in zip(images, angles)])
    if self.randaugment_ops:
      images = np.stack([rand_augment(im, rng, self.randaugment_ops, self.randaugment_magnitude)
                         for im in images])
    if self.color_jitter:
      images = color_jitter(images, rng, self.color_jitter)
    return {**batch, "image": np.ascontiguousarray(images)}


# ---------------------------------------------------------------- device ops


def _partners(x: jax.Array, perm: jax.Array) -> jax.Array:
  """`x[perm]` along the batch axis, keeping `x`'s sharding (explicit meshes need it said)."""
  sharding = jax.typeof(x).sharding
  if not any(getattr(sharding, "spec", None) or ()):
    return x[perm]
  return x.at[perm].get(out_sharding=sharding)


def mixup(images: jax.Array, targets: jax.Array, rng: jax.Array,
          alpha: float) -> tuple[jax.Array, jax.Array]:
  """Each example blended with a partner from a permutation of the batch, lam ~ Beta(a, a)."""
  lam_rng, perm_rng = jax.random.split(rng)
  lam = jax.random.beta(lam_rng, alpha, alpha)
  perm = jax.random.permutation(perm_rng, images.shape[0])
  mixed = lam * images + (1 - lam) * _partners(images, perm)
  return mixed, lam * targets + (1 - lam) * _partners(targets, perm)


def cutmix(images: jax.Array, targets: jax.Array, rng: jax.Array,
           alpha: float) -> tuple[jax.Array, jax.Array]:
  """A box from a partner image pasted in; targets weighted by the area actually pasted."""
  lam_rng, box_rng, perm_rng = jax.random.split(rng, 3)
  lam = jax.random.beta(lam_rng, alpha, alpha)
  height, width = images.shape[1:3]
  cut_h = jnp.round(height * jnp.sqrt(1 - lam)).astype(jnp.int32)
  cut_w = jnp.round(width * jnp.sqrt(1 - lam)).astype(jnp.int32)
  cy, cx = jax.random.randint(box_rng, (2,), 0, jnp.array([height, width]))
  top, bottom = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + (cut_h + 1) // 2, 0, height)
  left, right = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + (cut_w + 1) // 2, 0, width)
  rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
  box = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
  perm = jax.random.permutation(perm_rng, images.shape[0])
  mixed = jnp.where(box[None, :, :, None], _partners(images, perm), images)
  kept = 1 - box.mean()
  return mixed, kept * targets + (1 - kept) * _partners(targets, perm)


def device_transform(data_config, dense_targets: Callable[[dict], jax.Array]):
  """The on-device batch transform (mixup and/or cutmix), or None when neither is set.

  `dense_targets(batch)` gives the targets to mix, [B, K] (the task's: one-hot labels,
  multi-hot labels, or every head's side by side); the mixed ones land in
  `batch['targets']`, which the losses read. With both set, each batch takes one
  of the two at random (as timm does).
  """
  mix_alpha, cut_alpha = data_config.mixup_alpha, data_config.cutmix_alpha
  if not (mix_alpha or cut_alpha):
    return None

  def transform(batch: dict, rng: jax.Array) -> dict:
    targets = dense_targets(batch)
    choose_rng, mix_rng = jax.random.split(rng)
    images = batch["image"]
    if mix_alpha and cut_alpha:
      images, targets = jax.lax.cond(
          jax.random.bernoulli(choose_rng),
          lambda: mixup(images, targets, mix_rng, mix_alpha),
          lambda: cutmix(images, targets, mix_rng, cut_alpha))
    elif mix_alpha:
      images, targets = mixup(images, targets, mix_rng, mix_alpha)
    else:
      images, targets = cutmix(images, targets, mix_rng, cut_alpha)
    return {**batch, "image": images, "targets": targets}
  return transform
