"""Data sources: `idx:`, `folder:` and `tfds:` as grain random-access sources.

Every source gives, per split, records `{'image': uint8 HWC, 'label': int}` and
the dataset's class names (a prepared CSV with more label columns adds
`'label/COLUMN': int` per extra column; a multi-label one adds `'labels'`). A split the source does not have (a validation split
for Fashion-MNIST, every split of a flat folder) is carved from the training
data by a seeded stratified split, so `train`, `val` and `test` never overlap:

    dataset = open_dataset("idx:/usr/share/datasets/fashion-mnist", options)
    val = dataset.split("val")
    len(val), dataset.class_names, val[0]["image"].shape

The registry `SOURCES` maps a prefix to the function that opens its native
splits; add a kind of source by adding one entry (`prepared:` adds its own, in
vision/data/prepared.py).
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pathlib
import struct
from typing import Callable, Mapping, Protocol, Sequence

import numpy as np
from PIL import Image
import sklearn.model_selection


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


class SourceError(ValueError):
  """A data source that cannot be read; the message names the path and the fix."""


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


def read_image(path: str | os.PathLike) -> np.ndarray:
  """An image file as uint8 HWC RGB; raises OSError (PIL's) when unreadable."""
  with Image.open(path) as image:
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


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
    path = self._paths[index]
    try:
      return {"image": read_image(path), "label": int(self._labels[index])}
    except OSError as error:
      raise SourceError(f"cannot read image {path}: {error}") from None


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


# ------------------------------------------------------------------------ folder

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _class_folders(root: pathlib.Path) -> list[str]:
  return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(root: pathlib.Path, class_names: Sequence[str]) -> tuple[list[str], np.ndarray]:
  paths, labels = [], []
  for index, name in enumerate(class_names):
    folder = root / name
    if not folder.is_dir():
      continue
    for path in sorted(folder.rglob("*")):
      if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
        paths.append(str(path))
        labels.append(index)
  return paths, np.asarray(labels, dtype=np.int64)


def open_folder(location: str, options: SplitOptions) -> NativeData:
  root = pathlib.Path(location)
  split_folders = {s: root / s for s in (options.train_split, options.val_split, options.test_split)
                   if (root / s).is_dir()}
  if options.train_split in split_folders:
    class_names = tuple(_class_folders(split_folders[options.train_split]))
  else:
    split_folders = {options.train_split: root}
    class_names = tuple(_class_folders(root))
  if not class_names:
    raise SourceError(f"{root} has no class sub-folders (expected {root}/CLASS_NAME/IMAGE.png)")
  splits = {}
  for split, folder in split_folders.items():
    paths, labels = _image_files(folder, class_names)
    if not paths:
      raise SourceError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    splits[split] = NativeSplit(ImageFileSource(paths, labels), labels)
  return NativeData(splits, class_names)


# -------------------------------------------------------------------------- TFDS

def open_tfds(name: str, options: SplitOptions) -> NativeData:
  import tensorflow_datasets as tfds  # heavy; only for TFDS sources

  builder = tfds.builder(name, data_dir=options.tfds_data_dir)
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
    "folder": open_folder,
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
  """(kept, taken) index arrays, sorted: `count` of `indices` taken, stratified by `labels` when
  every class has two or more members (seeded, sklearn's train_test_split)."""
  if count >= len(indices):
    raise SourceError(
        f"cannot carve {count} examples from a training split of {len(indices)}: "
        "lower data.val_fraction / data.test_fraction or add data")
  _, class_counts = np.unique(labels, return_counts=True)
  stratify = labels if class_counts.min() >= 2 and count >= len(class_counts) else None
  keep, taken = sklearn.model_selection.train_test_split(
      indices, test_size=count, stratify=stratify, random_state=seed)
  return np.sort(keep), np.sort(taken)


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
  """Opens `source` once: its train/val/test splits and its class names."""
  data = open_native(source, options)
  splits = carve_splits(data, options)
  num_classes = int(max(int(s.labels.max()) for s in splits.values() if len(s.labels)) + 1)
  class_names = data.class_names or options.class_names or tuple(
      str(i) for i in range(num_classes))
  if len(class_names) < num_classes:
    raise SourceError(
        f"data source {source!r} has labels up to {num_classes - 1} but "
        f"{len(class_names)} class names (config key 'data.class_names')")
  return Dataset({name: split.records for name, split in splits.items()}, tuple(class_names),
                 image_size=data.image_size, multi_label=data.multi_label,
                 label_columns=dict(data.label_columns))


def split_options(data_config) -> SplitOptions:
  """SplitOptions from a validated `config.data`."""
  names = data_config.class_names
  return SplitOptions(
      train_split=data_config.train_split, val_split=data_config.val_split,
      test_split=data_config.test_split, val_fraction=data_config.val_fraction,
      test_fraction=data_config.test_fraction, split_seed=data_config.split_seed,
      class_names=tuple(names) if names else None, tfds_data_dir=data_config.tfds_data_dir)
