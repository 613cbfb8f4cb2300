"""Uploaded image bytes -> the model's uint8 HWC input, with limits checked before decoding.

    limits = Limits(max_pixels=40_000_000)
    image = decode_image(data, limits, height=28, width=28, channels=1)

Every rejection is a `RequestError` carrying the HTTP status and a one-line message.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import warnings

import numpy as np
from PIL import Image

from vision.data.pipeline import ImageSpec, prepare_image

ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")


class RequestError(Exception):
  """A request the server refuses: `status` (4xx) and a clear message."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status
    self.message = message


@dataclasses.dataclass(frozen=True)
class Limits:
  """What one request may contain."""
  max_request_bytes: int = 10 * 1024 * 1024
  max_pixels: int = 40_000_000
  max_images: int = 64


def decode_base64(text: object, where: str) -> bytes:
  if not isinstance(text, str) or not text:
    raise RequestError(400, f"{where}: expected a non-empty base64 string")
  if text.startswith("data:") and "," in text:  # data URLs from browsers
    text = text.split(",", 1)[1]
  try:
    return base64.b64decode(text, validate=True)
  except (binascii.Error, ValueError):
    raise RequestError(400, f"{where}: not valid base64") from None


def decode_image(data: bytes, limits: Limits, *, height: int, width: int, channels: int,
                 where: str = "image") -> np.ndarray:
  """Encoded bytes -> uint8 [height, width, channels], or a RequestError."""
  if not data:
    raise RequestError(400, f"{where}: empty file")
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      image = Image.open(io.BytesIO(data))
      image_format = image.format
      pixels = image.width * image.height
      if image_format not in ALLOWED_FORMATS:
        raise RequestError(415, f"{where}: unsupported image format {image_format}; "
                           f"send one of {', '.join(ALLOWED_FORMATS)}")
      if pixels > limits.max_pixels:
        raise RequestError(413, f"{where}: {image.width}x{image.height} = {pixels} pixels is over "
                           f"the limit of {limits.max_pixels} (--max_pixels)")
      rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
  except RequestError:
    raise
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
    raise RequestError(413, f"{where}: {error}") from None
  except (OSError, ValueError, SyntaxError) as error:
    raise RequestError(400, f"{where}: cannot decode the image ({error}); "
                       f"send one of {', '.join(ALLOWED_FORMATS)}") from None
  return to_model_input(rgb, height=height, width=width, channels=channels)


def to_model_input(rgb: np.ndarray, *, height: int, width: int, channels: int) -> np.ndarray:
  """A decoded RGB uint8 image -> the model's channels and size.

  Square models get the training pipeline's own resize (shorter side, centre crop);
  others a plain resize to height x width.
  """
  if height == width:
    return prepare_image(rgb, ImageSpec(height, channels, (), ()))
  image = Image.fromarray(rgb).resize((width, height), Image.BILINEAR)
  if channels == 1:
    return np.asarray(image.convert("L"), dtype=np.uint8)[..., None]
  return np.asarray(image, dtype=np.uint8)
