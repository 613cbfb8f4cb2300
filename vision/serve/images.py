"""Uploaded image bytes -> the model's uint8 HWC input, with limits checked before decoding.

    limits = Limits(max_pixels=40_000_000)
    image = decode_upload(data, limits, height=28, width=28, channels=1)

Decoding is vision/data/decode.py's, as for training, predict and prepare, so an
upload is seen exactly as the same file on disk (EXIF orientation, alpha on
white, 16-bit...). `--max_pixels` governs: Pillow's own cap follows it. Every
rejection is a `RequestError` carrying the HTTP status and a one-line message.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses

import numpy as np
from PIL import Image

from vision.data.decode import FORMATS, DecodeError, decode_image
from vision.data.pipeline import ImageSpec, prepare_image

# HTTP status per decoder failure kind; the others are 400.
_STATUS = {"over-pixel-limit": 413, "unsupported-format": 415}


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


def decode_upload(data: bytes, limits: Limits, *, height: int, width: int, channels: int,
                  resize_size: int | None = None, interpolation: str = "bilinear",
                  where: str = "image") -> np.ndarray:
  """Encoded bytes -> uint8 [height, width, channels], or a RequestError."""
  try:
    rgb = decode_image(data, where=where, max_pixels=limits.max_pixels)
  except DecodeError as error:
    raise RequestError(_STATUS.get(error.kind, 400), _message(error)) from None
  return to_model_input(rgb, height=height, width=width, channels=channels,
                        resize_size=resize_size, interpolation=interpolation)


def _message(error: DecodeError) -> str:
  if error.kind == "over-pixel-limit":
    return f"{error} (--max_pixels)"
  if error.kind == "zero-byte":
    return f"{error.where}: empty file"
  if error.kind == "unsupported-format":
    return str(error)
  return (f"{error.where}: cannot decode the image ({error.reason}); send one of "
          f"{', '.join(FORMATS)}")


def to_model_input(rgb: np.ndarray, *, height: int, width: int, channels: int,
                   resize_size: int | None = None, interpolation: str = "bilinear") -> np.ndarray:
  """A decoded RGB uint8 image -> the model's channels and size.

  Square models get the training pipeline's own resize (shorter side to
  `resize_size`, default the input size, then the centre crop), as evaluate and
  predict do; others a plain resize to height x width.
  """
  if height == width:
    return prepare_image(rgb, ImageSpec(height, channels, (), (), resize_size, interpolation))
  image = Image.fromarray(rgb).resize((width, height), Image.BILINEAR)
  if channels == 1:
    return np.asarray(image.convert("L"), dtype=np.uint8)[..., None]
  return np.asarray(image, dtype=np.uint8)
