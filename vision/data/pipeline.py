"""The grain input pipeline: shuffle, shard per process, preprocess, batch, normalise.

    loader = train_loader(records, config.data, batch_size=128 // jax.process_count(), seed=0)
    iterator = iter(loader)                      # state checkpointed with the train state
    batch = next(iterator)                       # {'image': float32 [B,H,W,C], 'label': int32 [B]}

Training uses a grain `IndexSampler`: a seeded global shuffle that changes every
epoch, each process reading only its shard (`ShardByJaxProcess`), optional
worker processes. Evaluation reads every example once in order and pads the
last batch, marking padding with `mask == 0`, so the batch shape (and the
compiled step) never changes.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Iterator, Sequence
import weakref

from absl import flags
import grain
import jax
import numpy as np
from PIL import Image

from vision.config import ConfigError
from vision.data import augment, sampling
from vision.data.sources import (COLUMN_PREFIX, ArraySource, RecordSource, SubsetSource,
                                 column_reader, multi_hot_reader, record_labels,
                                 vectorised_reader)


@dataclasses.dataclass(frozen=True)
class ImageSpec:
  """The images the model sees: size, channels and normalisation."""
  size: int
  channels: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  # Shorter side before the centre crop (None: `size`), and the resampling filter.
  resize_size: int | None = None
  interpolation: str = "bilinear"


def image_spec(data_config, sample_image: np.ndarray,
               default_size: int | None = None) -> ImageSpec:
  """The spec from `config.data`, filling unset size/channels from the source or a sample image."""
  height, width, channels = sample_image.shape
  if data_config.image_size is None and default_size is None and height != width:
    raise ConfigError(
        f"images are {height}x{width}; set config key 'data.image_size' to train on square inputs")
  channels = data_config.channels or channels
  mean, std = tuple(data_config.mean), tuple(data_config.std)
  if len(mean) == 1:
    mean, std = mean * channels, std * channels
  if len(mean) != channels:
    raise ConfigError(
        f"config keys 'data.mean'/'data.std' have {len(mean)} values for {channels}-channel images")
  return ImageSpec(data_config.image_size or default_size or height, channels, mean, std)


def _match_channels(image: np.ndarray, channels: int) -> np.ndarray:
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == channels:
    return image
  if channels == 3 and image.shape[-1] == 1:
    return np.repeat(image, 3, axis=-1)
  if channels == 1:
    # ITU-R 601 luma, the same weights PIL's convert('L') uses.
    grey = image[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.round(grey).astype(np.uint8)[..., None]
  raise ValueError(f"cannot convert {image.shape[-1]}-channel images to {channels} channels")


_FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def resize_crop_geometry(height: int, width: int, size: int,
                         resize_size: int | None = None) -> tuple[int, int, int, int]:
  """(resized height, resized width, crop top, crop left) of `resize_and_center_crop`."""
  resize_size = resize_size or size
  if (height, width) == (size, size) and resize_size == size:
    return height, width, 0, 0
  short, long = min(height, width), max(height, width)
  new_short, new_long = resize_size, int(resize_size * long / short)
  new_h, new_w = (new_short, new_long) if height <= width else (new_long, new_short)
  return new_h, new_w, int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))


def resize_and_center_crop(image: np.ndarray, size: int, resize_size: int | None = None,
                           interpolation: str = "bilinear") -> np.ndarray:
  """Resizes the shorter side to `resize_size` (default `size`), then crops the centre square.

  The arithmetic is torchvision's `Resize(resize_size)` + `CenterCrop(size)` on a
  PIL image, so pretrained models see exactly what they saw in PyTorch.
  """
  height, width = image.shape[:2]
  if (height, width) == (size, size) and (resize_size or size) == size:
    return image
  new_h, new_w, top, left = resize_crop_geometry(height, width, size, resize_size)
  pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  if (new_h, new_w) != (height, width):
    pil = pil.resize((new_w, new_h), _FILTERS[interpolation])
  resized = np.asarray(pil)
  if resized.ndim == 2:
    resized = resized[..., None]
  return resized[top:top + size, left:left + size]


def prepare_image(image: np.ndarray, spec: ImageSpec) -> np.ndarray:
  """A decoded uint8 image → the model's channels and size."""
  return resize_and_center_crop(_match_channels(np.asarray(image), spec.channels), spec.size,
                                spec.resize_size, spec.interpolation)


def read_batch(records: RecordSource, indices: np.ndarray,
               spec: ImageSpec) -> tuple[np.ndarray, np.ndarray]:
  """uint8 images [B, H, W, C] of the model's size and int32 labels for `indices`."""
  reader = vectorised_reader(records)
  if reader is not None:
    images, labels = reader(indices)
    if (isinstance(images, np.ndarray) and images.ndim == 4
        and images.shape[1:3] == (spec.size, spec.size)):
      # The right size already: only the channels may differ, converted for the whole batch.
      return _match_channels(images, spec.channels), labels.astype(np.int32)
  else:
    rows = [records[int(i)] for i in indices]
    images, labels = [r["image"] for r in rows], np.asarray([r["label"] for r in rows])
  prepared = [prepare_image(image, spec) for image in images]
  if not prepared:
    return np.zeros((0, spec.size, spec.size, spec.channels), np.uint8), np.zeros((0,), np.int32)
  return np.stack(prepared), labels.astype(np.int32)


# A split's decoded, model-ready images are kept in memory after their first read when they
# fit in this many bytes (Fashion-MNIST's training split: 44 MB), so that every epoch after
# the first reads memory, as `idx:` does, instead of decoding files again.
DECODED_CACHE_BYTES = 1 << 30


class DecodedImages:
  """One split's model-ready uint8 images and labels, filled in as they are first read."""

  def __init__(self, count: int, spec: ImageSpec):
    # np.empty only reserves: memory is taken as images arrive.
    self.images = np.empty((count, spec.size, spec.size, spec.channels), np.uint8)
    self.labels = np.empty((count,), np.int32)
    self.filled = np.zeros((count,), bool)

  def read(self, records: RecordSource, indices: np.ndarray,
           spec: ImageSpec) -> tuple[np.ndarray, np.ndarray]:
    indices = np.asarray(indices, np.int64)
    missing = np.unique(indices[~self.filled[indices]])
    if len(missing):
      self.images[missing], self.labels[missing] = read_batch(records, missing, spec)
      self.filled[missing] = True
    return self.images[indices], self.labels[indices]


# records → {spec: DecodedImages}; an entry goes with its source (each grain worker has its own).
_DECODED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _in_memory(records: RecordSource) -> bool:
  while isinstance(records, SubsetSource):
    records = records.base
  return isinstance(records, ArraySource)


def cached_read_batch(records: RecordSource, indices: np.ndarray,
                      spec: ImageSpec) -> tuple[np.ndarray, np.ndarray]:
  """`read_batch`, kept in memory (`DecodedImages`) for sources that decode files, if they fit.

  Why `prepared:` trained ~15% slower than `idx:` on the same images: each
  batch read 128 records one by one, parsed their headers and decoded their
  PNGs in the input thread, which shares the CPU with the train step.
  """
  if _in_memory(records) or len(records) * spec.size**2 * spec.channels > DECODED_CACHE_BYTES:
    return read_batch(records, indices, spec)
  caches = _DECODED.setdefault(records, {})
  if spec not in caches:
    caches[spec] = DecodedImages(len(records), spec)
  return caches[spec].read(records, indices, spec)


@dataclasses.dataclass(frozen=True)
class LoadBatch(grain.transforms.Map):
  """A batch of record indices → {'image': uint8 [B,H,W,C], 'label': int32 [B], ...}.

  Multi-label sources add 'labels' (float32 multi-hot [B, C]); sources with extra
  label columns add 'label/COLUMN' (int32 [B]) for each.
  """
  records: RecordSource
  spec: ImageSpec

  def map(self, indices: np.ndarray) -> dict:
    images, labels = cached_read_batch(self.records, indices, self.spec)
    return {"image": images, "label": labels, **label_fields(self.records, indices)}


def label_fields(records: RecordSource, indices: np.ndarray) -> dict[str, np.ndarray]:
  """The labels a batch carries besides 'label': multi-hot 'labels', 'label/COLUMN'."""
  indices = np.asarray(indices, np.int64)
  fields = {}
  multi_hot = multi_hot_reader(records)
  if multi_hot is not None:  # multi-label datasets: float32 [B, num_classes]
    fields["labels"] = multi_hot(indices)
  columns = column_reader(records)
  if columns is not None:
    for name, values in columns(indices).items():
      fields[COLUMN_PREFIX + name] = values.astype(np.int32)
  return fields


@dataclasses.dataclass(frozen=True)
class Augment(grain.transforms.RandomMap):
  """Pad-and-random-crop and horizontal flip of a whole batch; grain seeds `rng` per batch."""
  crop_padding: int
  flip: bool

  def random_map(self, batch: dict, rng: np.random.Generator) -> dict:
    images = batch["image"]
    count, height, width = images.shape[:3]
    if self.crop_padding:
      pad = self.crop_padding
      padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
      windows = np.lib.stride_tricks.sliding_window_view(padded, (height, width), axis=(1, 2))
      top, left = rng.integers(0, 2 * pad + 1, size=(2, count))
      # windows: [B, dy, dx, C, H, W] → one window per image, back to HWC.
      images = windows[np.arange(count), top, left].transpose(0, 2, 3, 1)
    if self.flip:
      flipped = rng.random(count) < 0.5
      images = np.where(flipped[:, None, None, None], images[:, :, ::-1], images)
    return {**batch, "image": np.ascontiguousarray(images)}


@dataclasses.dataclass(frozen=True)
class Normalise(grain.transforms.Map):
  """uint8 batch → float32 `(x / 255 - mean) / std`, vectorised over the batch."""
  spec: ImageSpec

  def map(self, batch: dict) -> dict:
    mean = np.asarray(self.spec.mean, np.float32)
    std = np.asarray(self.spec.std, np.float32)
    image = (batch["image"].astype(np.float32) / 255.0 - mean) / std
    return {**batch, "image": image}


class IndexBatches(Sequence[np.ndarray]):
  """Batch `i` of record indices, computed directly: grain's `range[shard].shuffle(seed)
  .repeat(epochs).batch(batch_size)` element for element, at a fraction of its cost.

  Grain's chain computes each of a batch's 128 indices through four Python
  layers (~33 µs each, 4 ms a batch: 5% of the quickstart's train step, on the
  cores the step uses). Here one batch is one vectorised slice plus, when
  shuffled, grain's own `index_shuffle` per element (epoch e uses seed + e, as
  `ShuffleMapDataset` does), so runs, resumes and results stay the same.
  """

  def __init__(self, num_records: int, batch_size: int, *, seed: int | None,
               epochs: int | None, drop_remainder: bool):
    self.shard, self.shards = jax.process_index(), jax.process_count()
    self.per_epoch = len(range(self.shard, num_records, self.shards))
    self.batch_size, self.seed = batch_size, seed
    # Records over every epoch; None: endless.
    self.total = None if epochs is None else epochs * self.per_epoch
    if self.total is None:
      self.length = sys.maxsize
    elif drop_remainder:
      self.length = self.total // batch_size
    else:
      self.length = -(-self.total // batch_size)

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, index: int) -> np.ndarray:
    if not 0 <= index < self.length:
      raise IndexError(f"batch {index} of {self.length}")
    start = index * self.batch_size
    stop = start + self.batch_size if self.total is None else min(
        start + self.batch_size, self.total)
    epoch, in_epoch = np.divmod(np.arange(start, stop, dtype=np.int64), self.per_epoch)
    if self.seed is not None:
      in_epoch = np.array([
          grain.experimental.index_shuffle(
              int(i), self.per_epoch - 1, (self.seed + int(e)) % 2**32, 4)
          for i, e in zip(in_epoch, epoch)], np.int64)
    return self.shard + in_epoch * self.shards


def index_batches(num_records: int, batch_size: int, *, seed: int | None, epochs: int | None,
                  drop_remainder: bool) -> grain.MapDataset:
  """Batches of this process's record indices; shuffled per epoch when `seed` is set.

  Grain works on indices, not records: per-element overhead stays off the hot
  path, and a checkpoint of the iterator is a few integers.
  """
  return grain.MapDataset.source(IndexBatches(
      num_records, batch_size, seed=seed, epochs=epochs, drop_remainder=drop_remainder))


def balanced_index_batches(records: RecordSource, batch_size: int, *, seed: int) -> grain.MapDataset:
  """Endless class-balanced batches of record indices (vision/data/sampling.py)."""
  order = sampling.BalancedOrder(record_labels(records), seed)
  indices = grain.MapDataset.source(order)[jax.process_index()::jax.process_count()]
  return indices.batch(batch_size, drop_remainder=True)


# One background thread a few batches ahead: grain's default (16 threads, 500
# elements) front-loads hundreds of batches and competes with XLA for the cores.
_READ_OPTIONS = grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)


def _iterate(dataset: grain.MapDataset, worker_count: int) -> grain.DatasetIterator:
  iterable = dataset.to_iter_dataset(read_options=_READ_OPTIONS)
  if worker_count:
    # grain's worker processes read absl flags; outside an absl app they are unparsed.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return iter(iterable)


def train_iterator(records: RecordSource, data_config, spec: ImageSpec, *,
                   batch_size: int, seed: int) -> grain.DatasetIterator:
  """Endless shuffled batches of this process's `batch_size` examples; checkpointable."""
  if len(records) < batch_size * jax.process_count():
    raise ConfigError(
        f"the training split has {len(records)} examples, fewer than one batch "
        f"(config key 'train.batch_size'={batch_size * jax.process_count()})")
  if data_config.get("sampler", "shuffle") == "balanced":
    dataset = balanced_index_batches(records, batch_size, seed=seed)
  else:
    dataset = index_batches(len(records), batch_size, seed=seed, epochs=None,
                            drop_remainder=True)
  dataset = dataset.map(LoadBatch(records, spec))
  if data_config.crop_padding or data_config.flip:
    dataset = dataset.random_map(Augment(data_config.crop_padding, data_config.flip), seed=seed)
  host_augment = augment.HostAugment.from_config(data_config) if "rotation" in data_config else None
  if host_augment is not None:
    dataset = dataset.random_map(host_augment, seed=seed + 1)
  return _iterate(dataset.map(Normalise(spec)), data_config.worker_count)


def eval_batches(records: RecordSource, spec: ImageSpec, *, batch_size: int,
                 worker_count: int = 0) -> Iterator[dict]:
  """Every example of this process's shard once, in order, in padded batches.

  Each process yields the same number of batches (`num_eval_batches`) so that
  multi-host evaluation steps stay in lockstep.
  """
  dataset = index_batches(len(records), batch_size, seed=None, epochs=1, drop_remainder=False)
  produced = 0
  for batch in _iterate(dataset.map(LoadBatch(records, spec)).map(Normalise(spec)), worker_count):
    yield pad_batch(batch, batch_size)
    produced += 1
  empty = {"image": np.zeros((0, spec.size, spec.size, spec.channels), np.float32),
           "label": np.zeros((0,), np.int32), **label_fields(records, np.zeros((0,), np.int64))}
  for _ in range(num_eval_batches(len(records), batch_size) - produced):
    yield pad_batch(empty, batch_size)


def num_eval_batches(num_records: int, batch_size: int) -> int:
  per_process = math.ceil(num_records / jax.process_count())
  return math.ceil(per_process / batch_size)


def pad_batch(batch: dict, batch_size: int) -> dict:
  """Pads to `batch_size` rows and adds `mask` (1 for real rows, 0 for padding)."""
  count = len(batch["label"])
  padding = batch_size - count

  def pad(array: np.ndarray) -> np.ndarray:
    return np.concatenate([array, np.zeros((padding, *array.shape[1:]), array.dtype)])

  padded = {key: pad(value) for key, value in batch.items()}
  return {**padded, "label": pad(batch["label"].astype(np.int32)),
          "mask": pad(np.ones((count,), np.float32))}


def steps_per_epoch(num_records: int, global_batch_size: int) -> int:
  return max(1, num_records // global_batch_size)


def limit_examples(records: RecordSource, limit: int | None) -> RecordSource:
  """A fixed random `limit` of the records (for smoke runs), or all of them."""
  if limit is None or limit >= len(records):
    return records
  chosen = np.random.default_rng(0).choice(len(records), size=limit, replace=False)
  return SubsetSource(records, np.sort(chosen))
