"""A synthetic dataset whose class evidence sits in one random quadrant (saliency tests).

    images, labels, quadrants = quadrant_images(256, seed=1)     # uint8 [N, 32, 32], ...
    write_quadrant_idx(root, train=2048, test=256)               # IDX files for `idx:ROOT`

Each 32×32 grey image is dim noise with one 8×8 texture patch, at a random
place inside a random quadrant; the texture is the class: horizontal, vertical
or diagonal stripes, or a checkerboard (none contains another: a solid square
would, stripes' edges, and a map for 'stripes' could rightly point at it). A map that explains the
prediction should peak inside that quadrant (the pointing game).
"""

from __future__ import annotations

import pathlib

import numpy as np

from conftest import write_idx

SIZE, PATCH, NUM_CLASSES = 32, 8, 4
CLASS_NAMES = ("horizontal", "vertical", "checker", "diagonal")


def texture(label: int) -> np.ndarray:
  """The 8×8 evidence of `label`, 0/1."""
  rows, cols = np.mgrid[:PATCH, :PATCH]
  return [(rows // 2) % 2, (cols // 2) % 2, ((rows // 2) + (cols // 2)) % 2,
          ((rows + cols) // 2) % 2][label].astype(np.float32)


def place(image: np.ndarray, label: int, quadrant: int, rng: np.random.Generator) -> None:
  """Draws `label`'s texture at a random spot inside `quadrant` (0..3, row-major)."""
  half = SIZE // 2
  top = (quadrant // 2) * half + rng.integers(0, half - PATCH + 1)
  left = (quadrant % 2) * half + rng.integers(0, half - PATCH + 1)
  patch = image[top:top + PATCH, left:left + PATCH].astype(np.float32)
  image[top:top + PATCH, left:left + PATCH] = np.clip(patch + 190 * texture(label), 0, 255)


def quadrant_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """uint8 images [N, 32, 32], labels [N] and the quadrant [N] holding each one's evidence."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 50, size=(count, SIZE, SIZE)).astype(np.uint8)
  labels = rng.integers(0, NUM_CLASSES, count)
  quadrants = rng.integers(0, 4, count)
  for image, label, quadrant in zip(images, labels, quadrants):
    place(image, int(label), int(quadrant), rng)
  return images, labels, quadrants


def two_class_images(count: int, seed: int):
  """Images with two classes' evidence in two different quadrants.

  Returns (images [N, 32, 32], labels [N, 2], quadrants [N, 2]).
  """
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 50, size=(count, SIZE, SIZE)).astype(np.uint8)
  labels = np.stack([rng.choice(NUM_CLASSES, 2, replace=False) for _ in range(count)])
  quadrants = np.stack([rng.choice(4, 2, replace=False) for _ in range(count)])
  for image, pair, where in zip(images, labels, quadrants):
    for label, quadrant in zip(pair, where):
      place(image, int(label), int(quadrant), rng)
  return images, labels, quadrants


def quadrant_of(maps: np.ndarray) -> np.ndarray:
  """The quadrant (0..3) of each map's maximum, maps [N, H, W]."""
  height, width = maps.shape[1:]
  flat = maps.reshape(len(maps), -1).argmax(axis=1)
  rows, cols = flat // width, flat % width
  return (rows >= height // 2) * 2 + (cols >= width // 2)


def write_quadrant_idx(root: pathlib.Path, train: int = 2048, test: int = 256) -> pathlib.Path:
  root.mkdir(parents=True, exist_ok=True)
  for prefix, count, seed in (("train", train, 0), ("t10k", test, 1)):
    images, labels, _ = quadrant_images(count, seed)
    write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images, True)
    write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels.astype(np.uint8), True)
  return root
