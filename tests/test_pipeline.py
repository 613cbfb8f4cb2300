"""The grain pipeline: seeded per-epoch shuffling, augmentation, checkpointable state, padding."""

from __future__ import annotations

import grain
import jax
import ml_collections
import numpy as np
import pytest

from vision.data import pipeline
from vision.data.sources import ArraySource

SPEC = pipeline.ImageSpec(size=8, channels=1, mean=(0.5,), std=(0.25,))


def _records(count: int = 40) -> ArraySource:
  images = np.arange(count * 64, dtype=np.uint32).reshape(count, 8, 8, 1) % 251
  return ArraySource(images.astype(np.uint8), np.arange(count) % 4)


def _data_config(**overrides) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"crop_padding": 0, "flip": False, "worker_count": 0, **overrides})


def _labels_of(iterator, batches: int) -> list[list[int]]:
  return [next(iterator)["label"].tolist() for _ in range(batches)]


def test_same_seed_same_order_and_every_epoch_reshuffled():
  records = _records()
  first = pipeline.train_iterator(records, _data_config(), SPEC, batch_size=10, seed=3)
  second = pipeline.train_iterator(records, _data_config(), SPEC, batch_size=10, seed=3)
  epochs = [sum(_labels_of(first, 4), []) for _ in range(2)]
  assert sum(_labels_of(second, 4), []) == epochs[0]
  image_order = [next(pipeline.train_iterator(records, _data_config(), SPEC, batch_size=40,
                                              seed=s))["image"][:, 0, 0, 0] for s in (3, 4)]
  assert not np.array_equal(*image_order)
  assert epochs[0] != epochs[1] and sorted(epochs[0]) == sorted(epochs[1])


@pytest.mark.parametrize("num_records,batch_size,seed,epochs,drop_remainder,shard,shards", [
    (1000, 128, 3, None, True, 0, 1),      # training: endless, batches cross epochs
    (1001, 100, 7, 2, False, 1, 2),        # two epochs, second of two processes
    (1001, 100, 7, 3, True, 0, 3),
    (1000, 128, None, 1, False, 0, 1),     # evaluation: in order, last batch short
    (10, 4, None, 1, False, 2, 3),
])
def test_index_batches_equal_grains_shuffle_repeat_batch(
    monkeypatch, num_records, batch_size, seed, epochs, drop_remainder, shard, shards):
  # The fast path must give exactly grain's order, so that results and resumes do not move.
  monkeypatch.setattr(jax, "process_index", lambda: shard)
  monkeypatch.setattr(jax, "process_count", lambda: shards)
  fast = pipeline.index_batches(num_records, batch_size, seed=seed, epochs=epochs,
                                drop_remainder=drop_remainder)
  reference = grain.MapDataset.range(num_records)[shard::shards]
  if seed is not None:
    reference = reference.shuffle(seed=seed)
  reference = reference.repeat(epochs).batch(batch_size, drop_remainder=drop_remainder)
  count = 3 * num_records // batch_size if epochs is None else len(reference)
  assert epochs is None or len(fast) == len(reference)
  for index in range(count):
    np.testing.assert_array_equal(fast[index], reference[index])


def test_iterator_state_resumes_at_the_next_batch():
  records = _records()
  iterator = pipeline.train_iterator(records, _data_config(flip=True, crop_padding=2), SPEC,
                                     batch_size=8, seed=0)
  _labels_of(iterator, 3)
  state = iterator.get_state()
  expected = next(iterator)
  resumed = pipeline.train_iterator(records, _data_config(flip=True, crop_padding=2), SPEC,
                                    batch_size=8, seed=0)
  resumed.set_state(state)
  got = next(resumed)
  np.testing.assert_array_equal(got["image"], expected["image"])
  np.testing.assert_array_equal(got["label"], expected["label"])


def test_batches_are_normalised_float32():
  batch = next(pipeline.train_iterator(_records(), _data_config(), SPEC, batch_size=8, seed=0))
  assert batch["image"].dtype == np.float32 and batch["image"].shape == (8, 8, 8, 1)
  raw = np.asarray([_records()[i]["image"] for i in range(40)], np.float32)
  assert batch["image"].min() >= (raw.min() / 255 - 0.5) / 0.25 - 1e-6
  assert batch["image"].max() <= (raw.max() / 255 - 0.5) / 0.25 + 1e-6


def test_augment_flips_and_crops_each_image_of_a_batch():
  image = np.arange(16, dtype=np.uint8).reshape(4, 4, 1)
  batch = {"image": np.stack([image] * 64), "label": np.zeros(64, np.int32)}
  flipped = pipeline.Augment(crop_padding=0, flip=True).random_map(batch, np.random.default_rng(0))
  kinds = {img.tobytes() for img in flipped["image"]}
  assert kinds == {image.tobytes(), image[:, ::-1].tobytes()}
  cropped = pipeline.Augment(crop_padding=1, flip=False).random_map(batch, np.random.default_rng(0))
  padded = np.pad(image[..., 0], 1)
  windows = {padded[t:t + 4, l:l + 4].tobytes() for t in range(3) for l in range(3)}
  got = {img[..., 0].tobytes() for img in cropped["image"]}
  assert got <= windows and len(got) > 3  # every crop is a shifted window, and they differ
  again = pipeline.Augment(crop_padding=1, flip=False).random_map(batch, np.random.default_rng(0))
  np.testing.assert_array_equal(again["image"], cropped["image"])


def test_folder_style_records_of_mixed_sizes_are_resized():
  records = [{"image": np.full((h, w, 3), 200, np.uint8), "label": i}
             for i, (h, w) in enumerate([(10, 12), (8, 8), (30, 9)])]
  images, labels = pipeline.read_batch(records, np.array([2, 0]), SPEC)
  assert images.shape == (2, 8, 8, 1) and labels.tolist() == [2, 0]


def test_worker_processes_give_the_same_batches():
  records = _records()
  expected = _labels_of(pipeline.train_iterator(records, _data_config(), SPEC, batch_size=8,
                                                seed=1), 6)
  with_workers = pipeline.train_iterator(records, _data_config(worker_count=1), SPEC,
                                         batch_size=8, seed=1)
  assert _labels_of(with_workers, 6) == expected


def test_eval_batches_pad_the_last_batch_with_a_mask():
  batches = list(pipeline.eval_batches(_records(21), SPEC, batch_size=8))
  assert len(batches) == 3 and all(b["image"].shape[0] == 8 for b in batches)
  assert [int(b["mask"].sum()) for b in batches] == [8, 8, 5]
  labels = np.concatenate([b["label"][b["mask"] > 0] for b in batches])
  assert labels.tolist() == [i % 4 for i in range(21)]


def test_prepare_image_converts_channels_and_resizes():
  rgb = np.zeros((10, 20, 3), np.uint8)
  rgb[..., 0] = 255
  out = pipeline.prepare_image(rgb, SPEC)
  assert out.shape == (8, 8, 1)
  assert int(out[0, 0, 0]) == 76  # 0.299 * 255, PIL's luma for pure red
  grey = pipeline.prepare_image(np.full((8, 8, 1), 9, np.uint8),
                                pipeline.ImageSpec(8, 3, (0.5,) * 3, (0.5,) * 3))
  assert grey.shape == (8, 8, 3) and (grey == 9).all()


class _CountingFiles:
  """A source that decodes on every access (as folder: and prepared: do), counting reads."""

  def __init__(self, records):
    self.records, self.reads = records, 0

  def __len__(self):
    return len(self.records)

  def __getitem__(self, index):
    self.reads += 1
    return {"image": self.records[index]["image"], "label": self.records[index]["label"]}


def test_decoded_images_are_read_once_then_from_memory(monkeypatch):
  source = _CountingFiles(_records(24))
  iterator = pipeline.train_iterator(source, _data_config(), SPEC, batch_size=8, seed=0)
  first_epoch = [next(iterator) for _ in range(3)]
  assert source.reads == 24
  second_epoch = [next(iterator) for _ in range(3)]
  assert source.reads == 24  # the second epoch came from memory
  # ...and holds what reading the files gives (each image's first pixel names its record).
  first_pixels = {int(source.records[i]["image"][0, 0, 0]): i for i in range(24)}
  for batch in first_epoch + second_epoch:
    pixels = np.round((batch["image"][:, 0, 0, 0] * 0.25 + 0.5) * 255).astype(int)
    expected, labels = pipeline.read_batch(source.records,
                                           np.array([first_pixels[p] for p in pixels]), SPEC)
    np.testing.assert_allclose(batch["image"], (expected / 255 - 0.5) / 0.25, atol=1e-6)
    np.testing.assert_array_equal(batch["label"], labels)
  # Nothing is kept for in-memory sources, nor for splits larger than the budget.
  in_memory = _records(24)
  pipeline.cached_read_batch(in_memory, np.arange(8), SPEC)
  assert in_memory not in pipeline._DECODED  # pylint: disable=protected-access
  monkeypatch.setattr(pipeline, "DECODED_CACHE_BYTES", 24 * 64 - 1)
  large = _CountingFiles(_records(24))
  for _ in range(2):
    pipeline.cached_read_batch(large, np.arange(8), SPEC)
  assert large.reads == 16
