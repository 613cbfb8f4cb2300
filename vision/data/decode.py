"""The one image decoder: file bytes -> uint8 [H, W, 3] RGB, the right way up.

    image = decode_image("photos/cat/001.jpg")                  # uint8 [H, W, 3]
    decoded = decode(upload, where="upload.png", max_pixels=40_000_000)
    decoded.image, decoded.format, decoded.conversions          # (('exif-rotated', '...'),)

Every reader goes through it: the `folder:`, `csv:` and `labelstudio:` sources,
`experiments.prepare` and its `prepared:` records, predict, evaluate, the
export's parity data and the server. A model is trained, checked and served on
the same pixels. What it normalises (Pillow decodes):

  * EXIF orientation is applied: a phone photo stored sideways comes out upright;
  * 16-bit greyscale is scaled to 8 bits (value / 257, rounded), not clipped at 255;
  * transparency (RGBA, LA, a palette's transparent colour) is composited on white;
  * palette, CMYK, greyscale and every other mode become RGB (grey: three equal channels).

The pixel limit is checked from the header, before a pixel is decoded; Pillow's
own decompression-bomb cap (`PIL.Image.MAX_IMAGE_PIXELS`) is raised to follow it,
so the caller's limit is the one that governs. Every failure is a `DecodeError`
naming the file, with a stable `kind` (`truncated`, `over-pixel-limit`, ...) that
the audit report and the server's HTTP statuses are keyed on.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pathlib
import threading
import warnings
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps

from vision.data.errors import SourceError

# Pillow's own default cap (1024 * 1024 * 1024 // 4 // 3 pixels).
DEFAULT_MAX_PIXELS = 89_478_485
# The formats any reader accepts; the others' parsers (EPS, PSD, ICO...) are never run.
FORMATS = ("PNG", "JPEG", "MPO", "GIF", "BMP", "WEBP", "TIFF")
_EXIF_ORIENTATION = 0x0112

# Every decode checks its own limit from the header, so Pillow's warning (raised at its
# cap, which is never below ours) adds nothing but noise in logs.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
_CAP_LOCK = threading.Lock()


class DecodeError(SourceError):
  """A file or upload that does not decode; `kind` is a stable key, the message names it."""

  def __init__(self, where: str, kind: str, reason: str):
    super().__init__(f"{where}: {reason}")
    self.where, self.kind, self.reason = where, kind, reason


@dataclasses.dataclass(frozen=True)
class Decoded:
  """A decoded image and what was done to it.

  `image`: uint8 [H, W, 3] RGB, upright. `format`/`mode`/`size`: as stored
  (Pillow's names; size is (width, height) before any rotation). `conversions`:
  (kind, description) per normalisation applied, e.g. ('exif-rotated', ...).
  """
  image: np.ndarray
  format: str
  mode: str
  size: tuple[int, int]
  conversions: tuple[tuple[str, str], ...] = ()


def decode_image(source: bytes | str | os.PathLike, *, where: str | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 formats: Sequence[str] = FORMATS) -> np.ndarray:
  """uint8 [H, W, 3] RGB of an image file or its bytes; see `decode`."""
  return decode(source, where=where, max_pixels=max_pixels, formats=formats).image


def decode(source: bytes | str | os.PathLike, *, where: str | None = None,
           max_pixels: int | None = DEFAULT_MAX_PIXELS,
           formats: Sequence[str] = FORMATS) -> Decoded:
  """Decodes a file (path) or encoded bytes; raises DecodeError naming `where` (or the path).

  `max_pixels`: largest width x height accepted (None: no limit); `formats`:
  Pillow format names accepted.
  """
  where, image = _load(source, where, max_pixels, formats)
  with image:
    try:
      conversions: list[tuple[str, str]] = []
      rgb = _to_rgb(_apply_orientation(image, conversions), conversions)
    except MemoryError:
      raise
    except Exception as error:  # pylint: disable=broad-except  (e.g. a malformed EXIF block)
      raise _broken(where, error) from None
    return Decoded(rgb, image.format, image.mode, image.size, tuple(conversions))


def check_image(source: bytes | str | os.PathLike, *, where: str | None = None,
                max_pixels: int | None = DEFAULT_MAX_PIXELS,
                formats: Sequence[str] = FORMATS) -> None:
  """Raises the DecodeError `decode` would, without converting pixels (for up-front scans)."""
  where, image = _load(source, where, max_pixels, formats)
  with image:
    try:
      _orientation(image)
    except Exception as error:  # pylint: disable=broad-except  (a malformed EXIF block)
      raise _broken(where, error) from None


def _load(source: bytes | str | os.PathLike, where: str | None, max_pixels: int | None,
          formats: Sequence[str]) -> tuple[str, Image.Image]:
  """(where, the image with its pixels decoded); every failure a DecodeError."""
  if isinstance(source, (bytes, bytearray, memoryview)):
    where, data = where or "image", bytes(source)
  else:
    where = where or str(source)
    data = _read(pathlib.Path(source), where)
  if not data:
    raise DecodeError(where, "zero-byte", "the file is empty (0 bytes)")
  image = _open(data, where, max_pixels, formats)
  try:
    image.load()
  except MemoryError:
    image.close()
    raise
  except Exception as error:  # pylint: disable=broad-except  (any decoder failure is the file's)
    image.close()
    raise _broken(where, error) from None
  return where, image


def _read(path: pathlib.Path, where: str) -> bytes:
  try:
    return path.read_bytes()
  except OSError as error:
    raise DecodeError(where, "unreadable",
                      f"cannot read the file: {error.strerror or error}") from None


def follow_pixel_limit(max_pixels: int | None) -> None:
  """Raises Pillow's decompression-bomb cap to `max_pixels` (never lowers it).

  Pillow refuses images over twice its cap while opening them, before the
  caller's own check could run: `--max_pixels=200000000` must govern.
  """
  cap = Image.MAX_IMAGE_PIXELS
  if max_pixels is None or cap is None or cap >= max_pixels:
    return
  with _CAP_LOCK:
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
      Image.MAX_IMAGE_PIXELS = max_pixels


def _open(data: bytes, where: str, max_pixels: int | None,
          formats: Sequence[str]) -> Image.Image:
  """The image with its header read (no pixels yet), its format and size checked."""
  follow_pixel_limit(max_pixels)
  try:
    image = Image.open(io.BytesIO(data))
  except Image.DecompressionBombError as error:
    raise DecodeError(where, "over-pixel-limit",
                      f"over the limit of {max_pixels} pixels ({error})") from None
  except Image.UnidentifiedImageError:
    raise DecodeError(where, "not-an-image", "not an image format Pillow can identify") from None
  except Exception as error:  # pylint: disable=broad-except  (a bad header is the file's fault)
    raise _broken(where, error) from None
  if image.format not in formats:
    image.close()
    raise DecodeError(where, "unsupported-format",
                      f"unsupported image format {image.format}; expected one of "
                      f"{', '.join(formats)}")
  width, height = image.size
  if max_pixels is not None and width * height > max_pixels:
    image.close()
    raise DecodeError(where, "over-pixel-limit", f"{width}x{height} = {width * height} pixels "
                      f"is over the limit of {max_pixels}")
  return image


def _broken(where: str, error: Exception) -> DecodeError:
  if "truncat" in str(error).lower():
    return DecodeError(where, "truncated", f"truncated image data ({error})")
  return DecodeError(where, "corrupt", f"corrupt image data ({type(error).__name__}: {error})")


def _orientation(image: Image.Image) -> int:
  """The EXIF orientation tag (1: as stored); parses EXIF only where the file carries some."""
  if image.format != "TIFF" and not any("exif" in str(key).lower() for key in image.info):
    return 1  # most files: no EXIF block to parse (TIFF keeps orientation among its own tags)
  return image.getexif().get(_EXIF_ORIENTATION, 1)


def _apply_orientation(image: Image.Image, conversions: list) -> Image.Image:
  """The image as it is meant to be displayed (EXIF orientation 2-8 applied)."""
  orientation = _orientation(image)
  if orientation not in range(2, 9):
    return image
  conversions.append(("exif-rotated", f"EXIF orientation {orientation} applied (stored the "
                      "right way up)"))
  return ImageOps.exif_transpose(image)


def _to_rgb(image: Image.Image, conversions: list) -> np.ndarray:
  """Any Pillow mode -> uint8 [H, W, 3], recording what was converted and why it matters."""
  mode = image.mode
  if mode.startswith("I;16") or mode == "I":
    values = np.asarray(image, dtype=np.float64)
    # Pillow's convert('RGB') would clip every 16-bit value above 255 to white.
    scale = 257.0 if mode.startswith("I;16") or values.max(initial=0) > 255 else 1.0
    conversions.append(("16-bit", f"16-bit {mode} image scaled to 8-bit RGB"))
    return _grey_to_rgb(np.clip(np.round(values / scale), 0, 255).astype(np.uint8))
  if mode in ("L", "1"):
    conversions.append(("greyscale", f"greyscale ({mode}) image converted to RGB"))
    return _grey_to_rgb(np.asarray(image if mode == "L" else image.convert("L"), dtype=np.uint8))
  if mode == "CMYK":
    conversions.append(("cmyk", "CMYK image converted to RGB"))
    return np.asarray(image.convert("RGB"), dtype=np.uint8)
  if mode in ("P", "PA"):
    conversions.append(("palette", f"palette ({mode}) image converted to RGB"))
    return _on_white(image.convert("RGBA"))
  if mode in ("RGBA", "LA", "La", "RGBa"):
    conversions.append(("alpha", f"{mode} image with transparency composited onto white"))
    return _on_white(image.convert("RGBA") if mode != "RGBA" else image)
  if mode != "RGB":
    conversions.append(("mode", f"{mode} image converted to RGB"))
    image = image.convert("RGB")
  return np.asarray(image, dtype=np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
  return np.stack([grey, grey, grey], axis=-1)


def _on_white(rgba: Image.Image) -> np.ndarray:
  """RGBA composited onto an opaque white background: what a viewer shows."""
  background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
  return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"), dtype=np.uint8)
