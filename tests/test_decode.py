"""One decoder for every reader: the same picture in many encodings reads the same everywhere.

A photo (scikit-image's chelsea) is written as an EXIF-rotated JPEG (pixels stored
sideways), an RGBA PNG whose transparent pixels hide black, a palette GIF, a 16-bit
PNG, a CMYK JPEG, WebP, TIFF, BMP and greyscale. The `folder:` and `csv:` sources,
prepare -> `prepared:`, predict's preprocessing and the server's upload path must
all return the same array, and that array must be the picture as a viewer shows it.
"""

from __future__ import annotations

import io
import pathlib

import numpy as np
from PIL import Image
import pytest
import skimage.data

from vision.data import audit, decode, pipeline, prepare
from vision.data.sources import SubsetSource, open_dataset
from vision.evaluate.predict import model_input
from vision.serve.images import Limits, decode_upload

HEIGHT, WIDTH = 60, 90  # not square: a sideways read has the wrong shape
# What models see: a plain resize + crop, and an imported model's resize-then-crop (256 -> 224 style).
SPECS = (pipeline.ImageSpec(48, 3, (0.5,) * 3, (0.5,) * 3),
         pipeline.ImageSpec(40, 1, (0.5,), (0.5,), resize_size=46, interpolation="bicubic"))


def picture() -> np.ndarray:
  return np.asarray(Image.fromarray(skimage.data.chelsea()).resize((WIDTH, HEIGHT),
                                                                    Image.BILINEAR))


def grey(rgb: np.ndarray) -> np.ndarray:
  return np.asarray(Image.fromarray(rgb).convert("L"))


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format=fmt, **kwargs)
  return buffer.getvalue()


def encodings() -> dict[str, tuple[bytes, np.ndarray, float, str | None]]:
  """name.ext -> (file bytes, the RGB a viewer shows, mean-abs tolerance, conversion kind)."""
  rgb = picture()
  luma = grey(rgb)
  luma3 = np.repeat(luma[..., None], 3, axis=-1)
  exif = Image.Exif()
  exif[0x0112] = 6  # "rotate 90° clockwise to display": the pixels are stored sideways
  sideways = Image.fromarray(np.ascontiguousarray(np.rot90(rgb, k=1)))
  # Transparent pixels hide black; a half-transparent band mixes with white.
  alpha = np.full((HEIGHT, WIDTH), 255, np.uint8)
  alpha[:, :30], alpha[:, 30:40] = 0, 128
  hidden = rgb.copy()
  hidden[:, :30] = 0
  on_white = np.round(hidden * (alpha[..., None] / 255) + 255 * (1 - alpha[..., None] / 255))
  palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
  deep = luma.astype(np.uint16) * 257 + np.random.default_rng(0).integers(
      0, 128, luma.shape, dtype=np.uint16)  # low bits that must round away, not clip
  return {
      "photo.png": (encode(Image.fromarray(rgb), "PNG"), rgb, 0, None),
      "phone.jpg": (encode(sideways, "JPEG", quality=95, exif=exif), rgb, 3, "exif-rotated"),
      "transparent.png": (encode(Image.fromarray(np.dstack([hidden, alpha])), "PNG"),
                          on_white.astype(np.uint8), 1, "alpha"),
      "palette.gif": (encode(palette, "GIF"), np.asarray(palette.convert("RGB")), 0, "palette"),
      "deep.png": (encode(Image.fromarray(deep), "PNG"), luma3, 0, "16-bit"),
      "print.jpg": (encode(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95), rgb, 2,
                    "cmyk"),
      "photo.webp": (encode(Image.fromarray(rgb), "WEBP", quality=90), rgb, 3, None),
      "photo.tiff": (encode(Image.fromarray(rgb), "TIFF"), rgb, 0, None),
      "photo.bmp": (encode(Image.fromarray(rgb), "BMP"), rgb, 0, None),
      "grey.png": (encode(Image.fromarray(luma), "PNG"), luma3, 0, "greyscale"),
  }


def all_records(dataset) -> dict[str, np.ndarray]:
  """path -> decoded image over every split of a file-backed dataset."""
  found = {}
  for records in dataset.splits.values():
    base, indices = (records.base, records.indices) if isinstance(records, SubsetSource) else (
        records, range(len(records)))
    for position, index in enumerate(indices):
      found[base.paths[int(index)]] = records[position]["image"]
  return found


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[pathlib.Path, dict]:
  """The encodings under root/cat/, a few other photos under root/dog/, and a CSV of both."""
  root = tmp_path_factory.mktemp("encodings") / "photos"
  (root / "cat").mkdir(parents=True)
  (root / "dog").mkdir()
  cases = encodings()
  for name, (data, *_) in cases.items():
    (root / "cat" / name).write_bytes(data)
  astronaut = skimage.data.astronaut()
  for i in range(4):
    crop = astronaut[i * 100:i * 100 + HEIGHT, i * 90:i * 90 + WIDTH]
    Image.fromarray(crop).save(root / "dog" / f"{i}.png")
  rows = ["path,label"] + [f"{p.relative_to(root.parent)},{p.parent.name}"
                           for p in sorted(root.rglob("*.*"))]
  (root.parent / "labels.csv").write_text("\n".join(rows) + "\n")
  return root, cases


def test_decoder_shows_each_encoding_as_a_viewer_does(written):
  root, cases = written
  for name, (data, expected, tolerance, conversion) in cases.items():
    decoded = decode.decode(data, where=name)
    assert decoded.image.shape == (HEIGHT, WIDTH, 3) and decoded.image.dtype == np.uint8, name
    error = np.abs(decoded.image.astype(np.int32) - expected).mean()
    assert error <= tolerance, (name, error)
    kinds = [kind for kind, _ in decoded.conversions]
    assert kinds == ([conversion] if conversion else []), (name, kinds)
    np.testing.assert_array_equal(decode.decode_image(root / "cat" / name), decoded.image)
  # The hidden black stays hidden: fully transparent pixels are white, as prepare always did.
  assert (decode.decode_image(cases["transparent.png"][0])[:, :30] == 255).all()
  # Sideways pixels, read raw, are another picture: the EXIF case is not a trivial pass.
  raw = np.asarray(Image.open(io.BytesIO(cases["phone.jpg"][0])).convert("RGB"))
  assert raw.shape == (WIDTH, HEIGHT, 3)


def test_every_reader_returns_the_same_array(written, tmp_path):
  root, cases = written
  folder = all_records(open_dataset(f"folder:{root}"))
  csv = all_records(open_dataset(f"csv:{root.parent / 'labels.csv'}"))
  prepare.prepare(f"folder:{root}", str(tmp_path / "prepared"), prepare.PrepareOptions(
      limits=audit.Limits(near_duplicate_distance=-1)))
  prepared = all_records(open_dataset(f"prepared:{tmp_path / 'prepared'}"))
  assert len(folder) == len(prepared) == len(cases) + 4
  for name, (data, *_) in cases.items():
    path = str(root / "cat" / name)
    reference = folder[path]
    np.testing.assert_array_equal(csv[str(pathlib.Path(path).resolve())], reference, name)
    np.testing.assert_array_equal(prepared[path], reference, name)
    # What the model sees: training's preprocessing of the record, predict's, the server's.
    for spec in SPECS:
      model_view = pipeline.prepare_image(reference, spec)
      np.testing.assert_array_equal(model_input(path, spec), model_view, name)
      served = decode_upload(data, Limits(), height=spec.size, width=spec.size,
                             channels=spec.channels, resize_size=spec.resize_size,
                             interpolation=spec.interpolation, where=name)
      np.testing.assert_array_equal(served, model_view, name)


def test_failures_name_the_file_with_a_stable_kind(tmp_path):
  jpeg = encode(Image.fromarray(picture()), "JPEG")
  cases = {
      "empty.png": (b"", "zero-byte"),
      "notes.png": (b"not a picture", "not-an-image"),
      "cut.jpg": (jpeg[:len(jpeg) // 2], "truncated"),
      "icon.ico": (encode(Image.fromarray(picture()), "ICO"), "unsupported-format"),
      "huge.png": (encode(Image.new("L", (200, 100)), "PNG"), "over-pixel-limit"),
  }
  for name, (data, kind) in cases.items():
    (tmp_path / name).write_bytes(data)
    with pytest.raises(decode.DecodeError) as error:
      decode.decode_image(tmp_path / name, max_pixels=10_000)
    assert error.value.kind == kind and str(error.value).startswith(f"{tmp_path / name}: "), (
        name, str(error.value))
  with pytest.raises(decode.DecodeError, match="missing.png: cannot read the file"):
    decode.decode_image(tmp_path / "missing.png")
