"""The export's parity check: a bounded sample by default, streamed batch by batch."""

from __future__ import annotations

import logging
import tracemalloc

from flax import nnx
import numpy as np
import pytest

from conftest import write_idx_dataset
from vision import config as config_lib
from vision import tasks
from vision.checkpoint import ModelCard, write_model_dir
from vision.config import ConfigError
from vision.export import DEFAULT_MAX_EXAMPLES
from vision.export import export as export_lib
from vision.models import ModelOptions, create_model

CLASSES = 10
TASK = tasks.plain_classification(CLASSES)


class _Exported:
  """An exported model stand-in: logits from a fixed projection, some images' negated."""

  def __init__(self, weights: np.ndarray, perturb: bool):
    self.weights, self.perturb = weights, perturb

  def predict(self, images: np.ndarray) -> dict:
    logits = images.reshape(len(images), -1).astype(np.float32) @ self.weights
    if self.perturb:
      flipped = images[:, 0, 0, 0] < 40  # about one image in seven
      logits[flipped] = -logits[flipped]
    # Every output the task's exported graph computes (the probabilities too), as a real export.
    return {**TASK.outputs(logits), "embedding": logits * 2}


def _batches(count: int, size: int, seed: int = 0):
  """Fresh uint8 batches, made only when asked for (as the data pipeline reads them)."""
  rng = np.random.default_rng(seed)
  for start in range(0, count, size):
    rows = min(size, count - start)
    yield {"image": rng.integers(0, 256, (rows, 16, 16, 3), dtype=np.uint8),
           "label": rng.integers(0, CLASSES, rows).astype(np.int32)}


def test_the_report_equals_the_direct_computation():
  weights = np.random.default_rng(1).normal(size=(16 * 16 * 3, CLASSES)).astype(np.float32)
  exact = _Exported(weights, perturb=False)
  report = export_lib.parity_report(lambda images: exact.predict(images)["logits"],
                                    _Exported(weights, perturb=True), _batches(150, 64), TASK)
  batches = list(_batches(150, 64))
  images, labels = (np.concatenate([b[key] for b in batches]) for key in ("image", "label"))
  reference = exact.predict(images)["logits"]
  exported = _Exported(weights, perturb=True).predict(images)["logits"]
  assert report["num_examples"] == 150 and report["embedding_dim"] == CLASSES
  assert report["top1_agreement"] == pytest.approx(
      np.mean(exported.argmax(-1) == reference.argmax(-1)))
  assert report["accuracy_jax"] == pytest.approx(np.mean(reference.argmax(-1) == labels))
  assert report["accuracy_exported"] == pytest.approx(np.mean(exported.argmax(-1) == labels))
  assert report["max_abs_logit_diff"] == pytest.approx(np.abs(exported - reference).max())
  assert report["mean_abs_logit_diff"] == pytest.approx(np.abs(exported - reference).mean())


def test_the_check_streams_its_batches_instead_of_keeping_them():
  weights = np.zeros((16 * 16 * 3, CLASSES), np.float32)
  model = _Exported(weights, perturb=False)
  batch_bytes = 64 * 16 * 16 * 3
  tracemalloc.start()
  try:
    report = export_lib.parity_report(lambda images: model.predict(images)["logits"], model,
                                      _batches(64 * 100, 64), TASK)
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert report["num_examples"] == 64 * 100
  # 100 batches went through; holding them (or their float logits) would take 100× a batch.
  assert peak < 20 * batch_bytes, peak


def test_progress_is_shown(caplog, monkeypatch):
  monkeypatch.setattr(export_lib, "_PROGRESS_SECONDS", 0.0)
  model = _Exported(np.ones((16 * 16 * 3, CLASSES), np.float32), perturb=False)
  with caplog.at_level(logging.INFO, logger="vision.export.export"):
    export_lib.parity_report(lambda images: model.predict(images)["logits"], model,
                             _batches(130, 64), TASK, total=130)
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("parity check")]
  assert [line.split(",")[0] for line in lines] == [
      "parity check: 64/130 images", "parity check: 128/130 images",
      "parity check: 130/130 images"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  """A small CNN's model directory over an IDX dataset whose validation split has 2,560 images."""
  root = tmp_path_factory.mktemp("parity")
  data = write_idx_dataset(root / "idx", train=25_600, test=16)
  options = ModelOptions(num_classes=4, in_channels=1, image_size=16, widths=(4,), hidden=8)
  card = ModelCard(arch="small_cnn", num_classes=4, class_names=("a", "b", "c", "d"),
                   image_size=16, channels=1, mean=(0.5,), std=(0.5,),
                   model_options={"widths": (4,), "hidden": 8})
  write_model_dir(root / "run", create_model("small_cnn", options, rngs=nnx.Rngs(0)), card)
  config = config_lib.defaults()
  config.data.source = f"idx:{data}"
  config_lib.save_resolved(config, root / "run")
  return root / "run"


@pytest.mark.slow
def test_the_parity_sample_is_bounded_by_default(model_dir, tmp_path):
  source = export_lib.ExportSource.open(model_dir, tmp_path)
  assert len(source.records) == DEFAULT_MAX_EXAMPLES == 2000
  # A fixed random sample across the split, not its first rows: the same on every run.
  again = export_lib.ExportSource.open(model_dir, tmp_path)
  assert list(source.records._indices) == list(again.records._indices)  # pylint: disable=protected-access
  assert source.records._indices.max() > 2000  # pylint: disable=protected-access
  assert len(export_lib.ExportSource.open(model_dir, tmp_path, max_examples=0).records) == 2560
  assert len(export_lib.ExportSource.open(model_dir, tmp_path, max_examples=300).records) == 300
  with pytest.raises(ConfigError, match="--max_examples=-1"):
    export_lib.ExportSource.open(model_dir, tmp_path, max_examples=-1)
