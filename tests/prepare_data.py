"""Messy image folders for the prepare/audit tests: good images plus every kind of bad file."""

from __future__ import annotations

import io
import pathlib
import shutil

import numpy as np
from PIL import Image

CLASSES = ("circle", "square", "triangle", "zigzag")


def good_image(label: int, rng: np.random.Generator, size: int = 24) -> np.ndarray:
  """A smooth random background (distinct perceptual hashes) with the class's bright quadrant."""
  low = rng.integers(0, 256, size=(4, 4, 3)).astype(np.uint8)
  image = np.asarray(Image.fromarray(low).resize((size, size), Image.BILINEAR)).astype(np.int32)
  half = size // 2
  top, left = divmod(label % 4, 2)
  image = image // 2
  image[top * half:(top + 1) * half, left * half:(left + 1) * half] += 120
  return np.clip(image, 0, 255).astype(np.uint8)


def _png_bytes(array: np.ndarray, **kwargs) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG", **kwargs)
  return buffer.getvalue()


def write_messy_folder(root: pathlib.Path, per_class=(12, 4, 4)) -> dict[str, set[str]]:
  """train/val/test class folders of good images plus odd files; returns {relative path: kinds}."""
  rng = np.random.default_rng(7)
  for split, count in zip(("train", "val", "test"), per_class):
    for label, name in enumerate(CLASSES):
      folder = root / split / name
      folder.mkdir(parents=True, exist_ok=True)
      for i in range(count):
        Image.fromarray(good_image(label, rng)).save(folder / f"{i:03d}.png")
  train = root / "train"
  expected: dict[str, set[str]] = {}

  def odd(relative: str, kind: str, data: bytes | None = None) -> pathlib.Path:
    path = root / relative
    if data is not None:
      path.write_bytes(data)
    expected.setdefault(relative, set()).add(kind)
    return path

  odd("train/circle/empty.png", "zero-byte", b"")
  odd("train/circle/notes.jpg", "not-an-image", b"these are my notes, not a picture\n")
  odd("train/square/readme.txt", "not-an-image", b"hello")
  jpeg = io.BytesIO()
  Image.fromarray(good_image(1, rng, 40)).save(jpeg, format="JPEG")
  odd("train/square/truncated.jpg", "truncated", jpeg.getvalue()[:300])
  corrupt = bytearray(_png_bytes(good_image(1, rng)))
  corrupt[60:90] = b"\0" * 30
  odd("train/square/corrupt.png", "corrupt", bytes(corrupt))
  (train / "triangle/missing.png").symlink_to(root / "does-not-exist.png")
  odd("train/triangle/missing.png", "unreadable")

  cmyk = io.BytesIO()
  Image.fromarray(good_image(2, rng)).convert("CMYK").save(cmyk, format="JPEG", quality=95)
  odd("train/triangle/cmyk.jpg", "cmyk", cmyk.getvalue())
  deep = (good_image(2, rng)[..., 0].astype(np.uint16) * 257)
  odd("train/triangle/sixteen.png", "16-bit", _png_bytes(deep))
  palette = io.BytesIO()
  Image.fromarray(good_image(3, rng)).convert("P", palette=Image.Palette.ADAPTIVE).save(
      palette, format="PNG")
  odd("train/zigzag/palette.png", "palette", palette.getvalue())
  rgba = np.concatenate([good_image(3, rng), np.full((24, 24, 1), 200, np.uint8)], axis=-1)
  odd("train/zigzag/alpha.png", "alpha", _png_bytes(rgba))
  odd("train/zigzag/grey.png", "greyscale", _png_bytes(good_image(3, rng)[..., 0]))
  exif = Image.Exif()
  exif[0x0112] = 6  # rotate 90° clockwise to display
  rotated = good_image(0, rng, 24)[:, :18]
  rotated[0, 0] = (255, 0, 0)
  odd("train/circle/rotated.png", "exif-rotated", _png_bytes(rotated, exif=exif))
  odd("train/circle/huge.png", "over-pixel-limit", _png_bytes(good_image(0, rng, 120)))
  odd("train/circle/tiny.png", "too-small", _png_bytes(good_image(0, rng, 6)))

  # Duplicates: an exact copy in the same split, one in another split (leakage), one filed under
  # another class (conflicting labels) and a near copy (slightly brighter) in another split.
  shutil.copy(train / "circle/000.png", train / "circle/copy-of-000.png")
  expected["train/circle/copy-of-000.png"] = {"duplicate-within-split"}
  shutil.copy(train / "square/001.png", root / "val/square/leaked.png")
  expected["val/square/leaked.png"] = {"leakage"}
  shutil.copy(train / "triangle/002.png", train / "zigzag/relabelled.png")
  expected["train/zigzag/relabelled.png"] = {"duplicate-conflicting-labels"}
  expected["train/triangle/002.png"] = {"duplicate-conflicting-labels"}
  near = np.asarray(Image.open(train / "zigzag/003.png")).astype(np.int32) + 3
  Image.fromarray(np.clip(near, 0, 255).astype(np.uint8)).save(root / "test/zigzag/near.png")
  expected["test/zigzag/near.png"] = {"near-duplicate-leakage"}
  expected["train/zigzag/003.png"] = {"near-duplicate-leakage"}  # the group's other member
  return expected


def rotated_expected(root: pathlib.Path) -> np.ndarray:
  """What the EXIF-rotated file must look like once prepared (stored the right way up)."""
  with Image.open(root / "train/circle/rotated.png") as image:
    return np.rot90(np.asarray(image.convert("RGB")), k=-1)
