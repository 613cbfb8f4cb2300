"""Data sources: `idx:`, `folder:`, `csv:`, `labelstudio:`, `tfds:`, `prepared:` for grain.

Every source gives, per split, records `{'image': uint8 HWC, 'label': int}` and
the dataset's class names (a prepared CSV with more label columns adds
`'label/COLUMN': int` per extra column; a multi-label one adds `'labels'`). A split the source does not have (a validation split
for Fashion-MNIST, every split of a flat folder) is carved from the training
data by a seeded stratified split, so `train`, `val` and `test` never overlap:

    dataset = open_dataset("idx:/usr/share/datasets/fashion-mnist", options)
    val = dataset.split("val")
    len(val), dataset.class_names, val[0]["image"].shape

Image files (`folder:`, `csv:`, `labelstudio:`; listed by vision/data/listing.py,
the same listing `experiments.prepare` uses) are decoded by the one decoder,
vision/data/decode.py. Before a split is returned, every file is decoded once:
files that do not (truncated, corrupt, not images) are skipped and counted in
one logged line, as `prepare` does, so no unreadable file is met after training.
Every source's class structure is then checked (vision/data/structure.py).

The registry `SOURCES` maps a prefix to the function that opens its native
splits; add a kind of source by adding one entry (`prepared:` adds its own, in
vision/data/prepared.py).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gzip
import logging
import os
import pathlib
import struct
from typing import Callable, Mapping, Protocol, Sequence

import numpy as np
import sklearn.model_selection

from vision.data import listing as listing_lib
from vision.data.decode import DecodeError, check_image, decode_image
from vision.data.errors import SourceError
from vision.data.structure import check_classes

log = logging.getLogger(__name__)


class RecordSource(Protocol):
  """What grain needs of a random-access source."""

  def __len__(self) -> int: ...
  def __getitem__(self, index: int) -> dict: ...


@dataclasses.dataclass(frozen=True)
class SplitOptions:
  """How to open a split; built from `config.data` by `split_options`."""
  val_split: str = "val"
  test_split: str = "test"
  train_split: str = "train"
  val_fraction: float = 0.1
  test_fraction: float = 0.1
  split_seed: int = 0
  class_names: tuple[str, ...] | None = None
  tfds_data_dir: str | None = None


@dataclasses.dataclass(frozen=True)
class NativeSplit:
  """A split as the source stores it: records plus their labels (for stratifying)."""
  records: RecordSource
  labels: np.ndarray


@dataclasses.dataclass(frozen=True)
class NativeData:
  splits: Mapping[str, NativeSplit]
  class_names: tuple[str, ...] | None
  # Prepared datasets: the default input size, the multi-label flag, and the class names of
  # each extra label column of a CSV (records carry `label/COLUMN`).
  image_size: int | None = None
  multi_label: bool = False
  label_columns: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
  # The class list comes from the data itself (class folders, CSV labels), so a class
  # without training examples is a mistake (vision/data/structure.py).
  discovered_classes: bool = False


class ArraySource:
  """Images and labels held in memory (IDX files are small)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    self._images, self._labels = images, labels

  @property
  def labels(self) -> np.ndarray:
    return self._labels

  def __len__(self) -> int:
    return len(self._labels)

  def __getitem__(self, index: int) -> dict:
    return {"image": self._images[index], "label": int(self._labels[index])}

  def read_arrays(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels at `indices` in one vectorised read."""
    return self._images[indices], self._labels[indices]


class SubsetSource:
  """The records of `base` at `indices`, in that order."""

  def __init__(self, base: RecordSource, indices: np.ndarray):
    self._base, self._indices = base, np.asarray(indices)

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, index: int) -> dict:
    return self._base[int(self._indices[index])]

  @property
  def base(self) -> RecordSource:
    return self._base

  @property
  def indices(self) -> np.ndarray:
    return self._indices


def record_labels(records: RecordSource) -> np.ndarray:
  """The integer label of every record, without decoding images where the source knows them."""
  if isinstance(records, SubsetSource):
    return record_labels(records.base)[records.indices]
  labels = getattr(records, "labels", None)
  if labels is not None:
    return np.asarray(labels, np.int64)
  return np.array([records[i]["label"] for i in range(len(records))], np.int64)


def multi_hot_reader(records: RecordSource):
  """`indices -> float32 [N, classes]` multi-hot targets for multi-label sources, else None."""
  if isinstance(records, SubsetSource):
    inner = multi_hot_reader(records.base)
    return inner and (lambda indices: inner(records.indices[np.asarray(indices, np.int64)]))
  return getattr(records, "read_multi_hot", None)


# Batches and records carry an extra label column NAME under this prefix: 'label/NAME'.
COLUMN_PREFIX = "label/"


def column_reader(records: RecordSource):
  """`indices -> {column: int64 [N]}` for sources with extra label columns (-1: no value), else None."""
  if isinstance(records, SubsetSource):
    inner = column_reader(records.base)
    return inner and (lambda indices: inner(records.indices[np.asarray(indices, np.int64)]))
  return getattr(records, "read_columns", None)


def vectorised_reader(records: RecordSource):
  """`indices -> (images, labels)` in one read where the source allows it, else None."""
  if isinstance(records, SubsetSource):
    inner = vectorised_reader(records.base)
    return inner and (lambda indices: inner(records.indices[np.asarray(indices)]))
  return getattr(records, "read_arrays", None)


def multi_hot(labels, num_classes: int) -> np.ndarray:
  """float32 [num_classes] with 1 at each of `labels` (class indices)."""
  vector = np.zeros((num_classes,), np.float32)
  vector[list(labels)] = 1.0
  return vector


class ImageFileSource:
  """Image files decoded on access (inside grain workers when there are any)."""

  def __init__(self, paths: Sequence[str], labels: np.ndarray):
    self._paths, self._labels = list(paths), labels

  @property
  def paths(self) -> list[str]:
    return self._paths

  @property
  def labels(self) -> np.ndarray:
    return self._labels

  def __len__(self) -> int:
    return len(self._paths)

  def __getitem__(self, index: int) -> dict:
    return {"image": decode_image(self._paths[index]), "label": int(self._labels[index])}


class MultiLabelFileSource(ImageFileSource):
  """Image files with several labels each; records add `labels`, a float32 multi-hot vector."""

  def __init__(self, paths: Sequence[str], label_lists: Sequence[Sequence[int]],
               num_classes: int):
    super().__init__(paths, np.array([labels[0] for labels in label_lists], np.int64))
    self._label_lists, self._num_classes = [list(l) for l in label_lists], num_classes

  def __getitem__(self, index: int) -> dict:
    return {**super().__getitem__(index),
            "labels": multi_hot(self._label_lists[index], self._num_classes)}

  def read_multi_hot(self, indices: np.ndarray) -> np.ndarray:
    """Multi-hot targets [N, classes], without decoding images."""
    return np.stack([multi_hot(self._label_lists[int(i)], self._num_classes) for i in indices]
                    ) if len(indices) else np.zeros((0, self._num_classes), np.float32)


class TfdsSource:
  """A TFDS array_record split, with labels widened to Python ints."""

  def __init__(self, source: RecordSource, labels: np.ndarray | None = None):
    self._source, self.labels = source, labels

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    record = self._source[index]
    return {"image": np.asarray(record["image"], dtype=np.uint8), "label": int(record["label"])}


# --------------------------------------------------------------------------- IDX

_IDX_PREFIXES = {"train": ("train",), "test": ("t10k", "test")}


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an MNIST-format IDX file, gzipped or raw, into a uint8 array."""
  path = pathlib.Path(path)
  raw = path.read_bytes()
  if raw[:2] == b"\x1f\x8b":
    raw = gzip.decompress(raw)
  if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
    raise SourceError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
  ndim = raw[3]
  shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
  data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
  if data.size != int(np.prod(shape)):
    raise SourceError(f"{path} is truncated: header says {shape}, found {data.size} bytes")
  return data.reshape(shape)


def _find_idx(directory: pathlib.Path, prefix: str, kind: str) -> pathlib.Path | None:
  rank = 3 if kind == "images" else 1
  for name in (f"{prefix}-{kind}-idx{rank}-ubyte", f"{prefix}-{kind}.idx{rank}-ubyte"):
    for suffix in (".gz", ""):
      if (directory / f"{name}{suffix}").exists():
        return directory / f"{name}{suffix}"
  return None


def open_idx(location: str, options: SplitOptions) -> NativeData:
  directory = pathlib.Path(location)
  splits = {}
  for split, prefixes in _IDX_PREFIXES.items():
    for prefix in prefixes:
      images_path = _find_idx(directory, prefix, "images")
      labels_path = _find_idx(directory, prefix, "labels")
      if images_path and labels_path:
        images, labels = read_idx(images_path), read_idx(labels_path).astype(np.int64)
        if len(images) != len(labels):
          raise SourceError(
              f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
        if images.ndim == 3:
          images = images[..., None]
        splits[split] = NativeSplit(ArraySource(images, labels), labels)
        break
  if "train" not in splits:
    raise SourceError(
        f"no IDX training files in {directory}: expected train-images-idx3-ubyte[.gz] "
        "and train-labels-idx1-ubyte[.gz]")
  return NativeData(splits, options.class_names)


# ------------------------------------------------ image files: folder, CSV, Label Studio

# Sources with more files than this say that they are checking them (it takes a while).
_ANNOUNCE_SCAN = 5000


_SCAN_CHUNK = 256  # files per thread task: a million files are 4k tasks, not a million futures


def _decode_failures(paths: Sequence[str]) -> list[listing_lib.Skipped | None]:
  failures = []
  for path in paths:
    try:
      check_image(path)
      failures.append(None)
    except DecodeError as error:
      failures.append(listing_lib.Skipped(path, error.kind, error.reason))
  return failures


def scan_items(items: Sequence[listing_lib.Item]
               ) -> tuple[list[listing_lib.Item], list[listing_lib.Skipped]]:
  """The items whose file decodes, and why the others do not: every file decoded once.

  `check_image` is the decoder without its RGB conversion. Decoding releases the
  GIL, so threads keep every core busy.
  """
  paths = [item.path for item in items]
  chunks = [paths[start:start + _SCAN_CHUNK] for start in range(0, len(paths), _SCAN_CHUNK)]
  with concurrent.futures.ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
    failures = [failure for chunk in pool.map(_decode_failures, chunks) for failure in chunk]
  kept = [item for item, failure in zip(items, failures) if failure is None]
  return kept, [failure for failure in failures if failure is not None]


def _report_skipped(source: str, total: int, skipped: Sequence[listing_lib.Skipped]) -> None:
  """One line, as `experiments.prepare` counts them: how many, of which kinds, one example."""
  if not skipped:
    return
  counts: dict[str, int] = {}
  for entry in skipped:
    counts[entry.kind] = counts.get(entry.kind, 0) + 1
  example = next((s for s in skipped if s.kind != listing_lib.MACOS_COMPANION), skipped[0])
  log.warning("%s: skipped %d of %d files (%s), e.g. %s: %s", source, len(skipped), total,
              ", ".join(f"{kind}: {n}" for kind, n in sorted(counts.items())), example.path,
              example.reason)


def _class_order(source: str, listing: listing_lib.Listing,
                 options: SplitOptions) -> tuple[tuple[str, ...], bool]:
  """The class names in order, and whether they come from the data (not `data.class_names`)."""
  if not options.class_names:
    return listing.class_names, True
  declared = tuple(options.class_names)
  known = set(declared)
  for item in listing.items:
    for label in item.labels:
      if label not in known:
        raise SourceError(
            f"{item.origin or item.path}: label {label!r} is not in config key "
            f"'data.class_names' {declared}; add it there or correct the label")
  unknown = [name for name in listing.class_names if name not in known]
  if unknown:  # class folders without files
    raise SourceError(f"{source}: class folder(s) {unknown} are not in config key "
                      f"'data.class_names' {declared}; add them there or remove the folders")
  return declared, False


def _file_split(paths: list[str], label_lists: list[list[int]], num_classes: int,
                multi_label: bool) -> NativeSplit:
  if multi_label:
    records = MultiLabelFileSource(paths, label_lists, num_classes)
  else:
    records = ImageFileSource(paths, np.array([l[0] for l in label_lists], np.int64))
  return NativeSplit(records, records.labels)


def listed_files_opener(kind: str) -> Callable[[str, SplitOptions], NativeData]:
  """The opener of a listed source (`folder`, `csv`, `labelstudio`; see vision/data/listing.py)."""

  def open_files(location: str, options: SplitOptions) -> NativeData:
    source = f"{kind}:{location}"
    listing = listing_lib.LISTERS[kind](location)
    class_names, discovered = _class_order(source, listing, options)
    if len(listing.items) > _ANNOUNCE_SCAN:
      log.info("%s: checking that its %d files decode (experiments.prepare does this once "
               "for all runs)", source, len(listing.items))
    items, failed = scan_items(listing.items)
    _report_skipped(source, len(listing.items) + len(listing.skipped),
                    listing.skipped + failed)
    index = {name: i for i, name in enumerate(class_names)}
    split_names = {"train": options.train_split, "val": options.val_split,
                   "test": options.test_split}
    multi_label = any(len(item.labels) > 1 for item in items)
    members: dict[str, tuple[list[str], list[list[int]]]] = {options.train_split: ([], [])}
    for item in items:
      paths, label_lists = members.setdefault(split_names[item.split or "train"], ([], []))
      paths.append(item.path)
      label_lists.append([index[label] for label in item.labels])
    splits = {split: _file_split(paths, label_lists, len(class_names), multi_label)
              for split, (paths, label_lists) in members.items()}
    return NativeData(splits, class_names, multi_label=multi_label,
                      discovered_classes=discovered)

  return open_files


# -------------------------------------------------------------------------- TFDS

def open_tfds(name: str, options: SplitOptions) -> NativeData:
  import tensorflow_datasets as tfds  # heavy; only for TFDS sources

  try:
    builder = tfds.builder(name, data_dir=options.tfds_data_dir)
  except tfds.core.registered.DatasetNotFoundError as error:
    raise SourceError(f"data source 'tfds:{name}': {str(error).splitlines()[0]}") from None
  builder.download_and_prepare(file_format="array_record")
  label_feature = builder.info.features["label"]
  class_names = tuple(label_feature.names) if hasattr(label_feature, "names") else None
  splits = {}
  for split in builder.info.splits.keys() or ("train", "test"):
    records = tfds.data_source(name, split=split, data_dir=options.tfds_data_dir, download=False)
    labels_only = tfds.data_source(
        name, split=split, data_dir=options.tfds_data_dir, download=False,
        decoders={"image": tfds.decode.SkipDecoding()})
    labels = np.fromiter((int(labels_only[i]["label"]) for i in range(len(labels_only))),
                         dtype=np.int64, count=len(labels_only))
    splits[split] = NativeSplit(TfdsSource(records, labels), labels)
  return NativeData(splits, class_names)


# `prepared:` is registered by vision/data/prepared.py (imported by the vision.data package).
SOURCES: dict[str, Callable[[str, SplitOptions], NativeData]] = {
    "idx": open_idx,
    "folder": listed_files_opener("folder"),
    "csv": listed_files_opener("csv"),
    "labelstudio": listed_files_opener("labelstudio"),
    "tfds": open_tfds,
}


# ------------------------------------------------------------------------ splits

def parse_source(source: str) -> tuple[str, str]:
  kind, sep, location = source.partition(":")
  if not sep or kind not in SOURCES:
    raise SourceError(
        f"data source {source!r} is not one of: {', '.join(k + ':...' for k in SOURCES)}")
  return kind, location


def open_native(source: str, options: SplitOptions) -> NativeData:
  kind, location = parse_source(source)
  return SOURCES[kind](location, options)


def carve_splits(data: NativeData, options: SplitOptions) -> dict[str, NativeSplit]:
  """Adds the missing val/test splits, carved from train (seeded, stratified)."""
  splits = dict(data.splits)
  train = splits[options.train_split]
  carved = {}
  for split, fraction in ((options.test_split, options.test_fraction),
                          (options.val_split, options.val_fraction)):
    if split not in splits:
      carved[split] = fraction
  if not carved:
    return splits
  remaining = np.arange(len(train.labels))
  for split, fraction in carved.items():
    count = max(1, round(fraction * len(train.labels)))
    keep, taken = stratified_split(remaining, train.labels[remaining], count, options.split_seed)
    splits[split] = NativeSplit(SubsetSource(train.records, taken), train.labels[taken])
    remaining = keep
  splits[options.train_split] = NativeSplit(
      SubsetSource(train.records, remaining), train.labels[remaining])
  return splits


def stratified_split(indices: np.ndarray, labels: np.ndarray, count: int,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(kept, taken): `count` of `indices` taken, stratified by `labels` where scikit-learn can.

  A class's only example always stays: carving it would leave the class untrained.
  Stratification needs at least 2 examples per class and `count` and the rest each
  at least one per class; otherwise the draw is uniform (scikit-learn would raise).
  """
  if count >= len(indices):
    raise SourceError(
        f"cannot carve {count} examples from a training split of {len(indices)}: "
        "lower data.val_fraction / data.test_fraction (experiments.prepare: --val_fraction / "
        "--test_fraction) or add data")
  classes, class_counts = np.unique(labels, return_counts=True)
  alone = np.isin(labels, classes[class_counts < 2])
  pool, pool_labels = indices[~alone], labels[~alone]
  if count >= len(pool):
    pool, pool_labels, alone = indices, labels, np.zeros(len(indices), bool)
  num_classes = len(np.unique(pool_labels))
  stratified = count >= num_classes and len(pool) - count >= num_classes and (
      np.unique(pool_labels, return_counts=True)[1].min() >= 2)
  keep, taken = sklearn.model_selection.train_test_split(
      pool, test_size=count, stratify=pool_labels if stratified else None, random_state=seed)
  return np.sort(np.concatenate([keep, indices[alone]])), np.sort(taken)


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Every split of a source (native or carved) and the dataset's class names."""
  splits: Mapping[str, RecordSource]
  class_names: tuple[str, ...]
  image_size: int | None = None  # the source's suggested input size, if it has one
  multi_label: bool = False
  # Extra label columns (a CSV prepared with more than one label column): name → class names.
  label_columns: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

  def split(self, name: str) -> RecordSource:
    if name not in self.splits:
      raise SourceError(f"the data source has no split {name!r}; it has {sorted(self.splits)}")
    return self.splits[name]


def open_dataset(source: str, options: SplitOptions = SplitOptions()) -> Dataset:
  """Opens `source` once: its train/val/test splits and its class names.

  Raises SourceError before anything trains on a structure training cannot use
  (vision/data/structure.py); logs the warnings.
  """
  data = open_native(source, options)
  if options.train_split not in data.splits:
    raise SourceError(f"data source {source!r} has no split {options.train_split!r} (config key "
                      f"'data.train_split'); it has {sorted(data.splits)}")
  class_names = _class_names(source, data, options)
  splits = carve_splits(data, options)
  counts = {name: class_counts(split, len(class_names)) for name, split in splits.items()}
  for warning in check_classes(
      source, class_names, counts, train_split=options.train_split, native_splits=data.splits,
      discovered=data.discovered_classes):
    log.warning(warning)
  return Dataset({name: split.records for name, split in splits.items()}, class_names,
                 image_size=data.image_size, multi_label=data.multi_label,
                 label_columns=dict(data.label_columns))


def _class_names(source: str, data: NativeData, options: SplitOptions) -> tuple[str, ...]:
  """The source's class names, else `data.class_names`, else '0', '1', ... up to the top label."""
  top = max((int(s.labels.max()) for s in data.splits.values() if len(s.labels)), default=-1)
  class_names = data.class_names or options.class_names or tuple(
      str(i) for i in range(top + 1))
  if len(class_names) <= top:
    raise SourceError(
        f"data source {source!r} has labels up to {top} but "
        f"{len(class_names)} class names (config key 'data.class_names')")
  return tuple(class_names)


def class_counts(split: NativeSplit, num_classes: int) -> np.ndarray:
  """Examples per class in a split (multi-label: images carrying each label); no decoding."""
  read_multi_hot = multi_hot_reader(split.records)
  if read_multi_hot is None:
    return np.bincount(np.asarray(split.labels, np.int64), minlength=num_classes)
  counts = np.zeros(num_classes, np.int64)
  for start in range(0, len(split.records), 65536):  # memory: a chunk of multi-hot rows at a time
    counts += read_multi_hot(np.arange(start, min(start + 65536, len(split.records)))).sum(
        0).astype(np.int64)
  return counts


def split_options(data_config) -> SplitOptions:
  """SplitOptions from a validated `config.data`."""
  names = data_config.class_names
  return SplitOptions(
      train_split=data_config.train_split, val_split=data_config.val_split,
      test_split=data_config.test_split, val_fraction=data_config.val_fraction,
      test_fraction=data_config.test_fraction, split_seed=data_config.split_seed,
      class_names=tuple(names) if names else None, tfds_data_dir=data_config.tfds_data_dir)
