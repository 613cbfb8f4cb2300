"""The serving parts without a model: router, micro-batcher, upload limits, log, drift tests."""

from __future__ import annotations

import concurrent.futures
import io
import json
import resource
import struct
import time
import zlib

import numpy as np
from PIL import Image
import PIL.Image
import pytest

from vision.data import pipeline
from vision.serve import drift
from vision.serve.batcher import MicroBatcher
from vision.serve.images import Limits, RequestError, decode_upload
from vision.serve.log import Prediction, PredictionLog, read_predictions
from vision.serve.router import Router
from vision.serve.runtime import read_spec


def png(array: np.ndarray, fmt: str = "PNG") -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format=fmt)
  return buffer.getvalue()


def test_router_follows_weights_and_is_reproducible_with_a_seed():
  router = Router(["a", "b"], [9, 1], seed=3)
  picks = [router.pick() for _ in range(2000)]
  assert 0.08 < picks.count("b") / len(picks) < 0.12
  again = Router(["a", "b"], [9, 1], seed=3)
  assert [again.pick() for _ in range(2000)] == picks
  with pytest.raises(ValueError, match="one weight per model"):
    Router(["a", "b"], [1.0])
  with pytest.raises(ValueError, match=">= 0"):
    Router(["a", "b"], [1.0, -1.0])


def test_micro_batcher_groups_concurrent_images_and_returns_each_its_row():
  calls = []

  def predict(images):
    calls.append(len(images))
    flat = images.reshape(len(images), -1).astype(np.float32)
    return flat.sum(1, keepdims=True), flat[:, :2]

  batcher = MicroBatcher(predict, max_batch_size=4, max_wait_ms=200)
  images = [np.full((2, 2, 1), i, np.uint8) for i in range(10)]
  try:
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
      futures = list(pool.map(batcher.submit, images))
    results = [f.result(timeout=10) for f in futures]
  finally:
    batcher.close()
  assert [float(logits[0]) for logits, _ in results] == [4.0 * i for i in range(10)]
  assert sum(calls) == 10 and max(calls) == 4 and len(calls) < 10
  assert batcher.stats.as_dict()["max_batch_size"] == 4 and not batcher.alive
  assert isinstance(batcher.submit(images[0]).exception(timeout=1), RuntimeError)


def test_uploads_are_checked_before_decoding_and_resized_to_the_model():
  limits = Limits(max_pixels=10_000)
  rgb = np.random.default_rng(0).integers(0, 256, (30, 40, 3), np.uint8)
  image = decode_upload(png(rgb), limits, height=16, width=16, channels=1)
  assert image.shape == (16, 16, 1) and image.dtype == np.uint8
  assert decode_upload(png(rgb, "JPEG"), limits, height=8, width=12, channels=3).shape == (8, 12, 3)
  for data, status, words in (
      (png(np.zeros((200, 200), np.uint8)), 413, "40000 pixels is over the limit of 10000"),
      (png(np.zeros((16, 16, 3), np.uint8), "ICO"), 415, "unsupported image format"),
      (b"GIF89a nonsense", 400, "cannot decode"),
      (b"", 400, "empty file")):
    with pytest.raises(RequestError, match=words) as error:
      decode_upload(data, limits, height=16, width=16, channels=1)
    assert error.value.status == status


def claiming_size(width: int, height: int) -> bytes:
  """A PNG whose header claims width x height (its pixel data is a 1x1 image's)."""
  data = bytearray(png(np.zeros((1, 1), np.uint8)))
  data[16:24] = struct.pack(">II", width, height)  # IHDR's width and height
  data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # IHDR's CRC
  return bytes(data)


def test_max_pixels_flag_governs_and_pillows_own_cap_follows_it():
  """`serve --max_pixels=200000000` takes a 12000x12000 upload; above the flag is still 413."""
  buffer = io.BytesIO()
  Image.new("L", (12000, 12000), 200).save(buffer, format="PNG", compress_level=1)  # 0.7 MB
  upload = buffer.getvalue()
  assert 12000 * 12000 > PIL.Image.MAX_IMAGE_PIXELS  # what Pillow alone would refuse
  for data, limit in ((upload, 100_000_000), (claiming_size(15000, 15000), 200_000_000)):
    with pytest.raises(RequestError, match=f"over the limit of {limit} \\(--max_pixels\\)") as error:
      decode_upload(data, Limits(max_pixels=limit), height=16, width=16, channels=3)
    assert error.value.status == 413
  image = decode_upload(upload, Limits(max_pixels=200_000_000), height=16, width=16, channels=3)
  assert image.shape == (16, 16, 3) and (image == 200).all()
  assert PIL.Image.MAX_IMAGE_PIXELS >= 200_000_000
  peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(f"peak RSS after the 12000x12000 upload: {peak_mib:.0f} MiB")


def test_export_json_resize_reaches_the_servers_preprocessing(tmp_path):
  """An imported model's 256 -> 224 style resize (export.json `preprocessing`) is served too."""
  (tmp_path / "model.onnx").write_bytes(b"onnx")
  meta = {"format": "onnx", "model_file": "model.onnx", "class_names": ["a", "b"],
          "input": {"height": 20, "width": 20, "channels": 3},
          "preprocessing": {"resize_size": 24, "interpolation": "bicubic"}}
  (tmp_path / "export.json").write_text(json.dumps(meta))
  spec = read_spec(tmp_path)
  assert (spec.resize_size, spec.interpolation) == (24, "bicubic")
  rgb = np.random.default_rng(0).integers(0, 256, (30, 40, 3), np.uint8)
  served = decode_upload(png(rgb), Limits(), height=20, width=20, channels=3,
                         resize_size=spec.resize_size, interpolation=spec.interpolation)
  np.testing.assert_array_equal(served, pipeline.prepare_image(
      rgb, pipeline.ImageSpec(20, 3, (), (), resize_size=24, interpolation="bicubic")))
  del meta["preprocessing"]  # exports written before the key existed
  (tmp_path / "export.json").write_text(json.dumps(meta))
  assert read_spec(tmp_path).resize_size is None


def test_prediction_log_writes_in_the_background_and_reads_back(tmp_path):
  log = PredictionLog(tmp_path / "serving.db", interval=0.05)
  start = time.time()
  for i in range(5):
    log.record(Prediction(f"id{i}", start + i, "v1" if i < 3 else "v2", i % 2, "x", 0.5 + i / 10,
                          np.arange(4, dtype=np.float16) * i))
  log.feedback("id1", 0)
  log.close()
  rows = read_predictions(tmp_path / "serving.db", version="v1")
  assert rows.ids == ["id0", "id1", "id2"] and rows.true_label.tolist() == [-1, 0, -1]
  np.testing.assert_allclose(rows.embedding[2], [0, 2, 4, 6])
  assert read_predictions(tmp_path / "serving.db", limit=2).ids == ["id3", "id4"]
  with pytest.raises(FileNotFoundError, match="does not exist"):
    read_predictions(tmp_path / "missing.db")


def test_drift_tests_pass_same_distribution_and_flag_a_shift():
  rng = np.random.default_rng(0)

  def outputs(n, shift=0.0):
    embedding = rng.normal(shift, 1, (n, 8)).astype(np.float32)
    confidence = np.clip(rng.beta(8, 2, n) - shift / 4, 0, 1)
    return drift.Outputs(confidence, embedding, rng.integers(0, 4, n))

  reference = outputs(500)
  same = drift.compare(reference, outputs(300), num_classes=4)
  shifted = drift.compare(reference, outputs(300, shift=1.0), num_classes=4)
  assert not same["drift"] and same["tests"]["embedding"]["p_value"] > 0.01
  assert shifted["drift"] and set(shifted["drifted"]) == {"confidence", "embedding"}
  assert shifted["tests"]["embedding"]["p_value"] < 1e-10
  with pytest.raises(ValueError, match="another model"):
    drift.compare(reference, drift.Outputs(np.ones(3), np.ones((3, 2)), np.zeros(3, int)),
                  num_classes=4)
