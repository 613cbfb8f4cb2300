"""Reading a dataset written by `experiments.prepare`: the `prepared:DIR` source.

    dataset = open_dataset("prepared:data/photos")      # via vision.data.sources.SOURCES
    dataset.class_names, dataset.split("val")[0]["image"].shape

Records decode to `{'image': uint8 HWC RGB, 'label': int}`; a multi-label
dataset adds `'labels'`, a float32 multi-hot vector over the classes, and a CSV
with extra label columns adds `'label/COLUMN'` per column (the index of the
value among `metadata.json: label_columns[COLUMN]`, -1 where the cell was empty).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from vision.data import prepare as prepare_lib
from vision.data.sources import (COLUMN_PREFIX, SOURCES, NativeData, NativeSplit, SourceError,
                                 SplitOptions, multi_hot)


class PreparedSource:
  """One split's array_record file, decoded on access (inside grain workers when there are any)."""

  def __init__(self, path: pathlib.Path, labels: list[list[int]], num_classes: int,
               multi_label: bool, paths: list[str],
               columns: dict[str, np.ndarray] | None = None):
    self._path, self._labels, self._paths = str(path), labels, paths
    self._num_classes, self._multi_label = num_classes, multi_label
    self._columns = columns or {}
    self._reader = None
    if multi_label:
      self.read_multi_hot = self._read_multi_hot
    if self._columns:
      self.read_columns = self._read_columns

  def __len__(self) -> int:
    return len(self._labels)

  def __getstate__(self) -> dict:
    state = {**self.__dict__, "_reader": None}  # readers do not pickle; workers reopen
    state.pop("read_multi_hot", None)
    state.pop("read_columns", None)
    return state

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state)
    if self._multi_label:
      self.read_multi_hot = self._read_multi_hot
    if self._columns:
      self.read_columns = self._read_columns

  def _records(self):
    if self._reader is None:
      import grain  # pylint: disable=import-outside-toplevel
      self._reader = grain.sources.ArrayRecordDataSource([self._path])
    return self._reader

  def __getitem__(self, index: int) -> dict:
    image, header = prepare_lib.decode_record(self._records()[int(index)])
    record = {"image": image, "label": int(header["labels"][0])}
    if self._multi_label:
      record["labels"] = multi_hot(header["labels"], self._num_classes)
    for name, values in self._columns.items():
      record[COLUMN_PREFIX + name] = int(values[int(index)])
    return record

  def _read_columns(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    """The extra label columns at `indices` (int64, -1: no value), without decoding images."""
    indices = np.asarray(indices, np.int64)
    return {name: values[indices] for name, values in self._columns.items()}

  def _read_multi_hot(self, indices: np.ndarray) -> np.ndarray:
    """Multi-hot targets [N, classes] from the metadata, without decoding images."""
    return np.stack([multi_hot(self._labels[int(i)], self._num_classes) for i in indices]
                    ) if len(indices) else np.zeros((0, self._num_classes), np.float32)

  @property
  def paths(self) -> list[str]:
    """The source file of each record (for label-issue reports)."""
    return self._paths

  @property
  def labels(self) -> np.ndarray:
    """The first (single-label: the only) label of each record."""
    return np.array([l[0] for l in self._labels], np.int64)

  @property
  def label_lists(self) -> list[list[int]]:
    return self._labels


def read_metadata(location: str | pathlib.Path) -> dict:
  path = pathlib.Path(location) / prepare_lib.METADATA
  if not path.is_file():
    raise SourceError(f"{location} is not a prepared dataset (no {prepare_lib.METADATA}); "
                      "make one with python -m experiments.prepare --source=... --out=DIR")
  metadata = json.loads(path.read_text())
  if metadata.get("format") != prepare_lib.FORMAT:
    raise SourceError(f"{path} has format {metadata.get('format')!r}; expected "
                      f"{prepare_lib.FORMAT!r} (re-run experiments.prepare)")
  return metadata


def open_prepared(location: str, options: SplitOptions) -> NativeData:
  del options  # splits, names and sizes all come from the metadata
  root = pathlib.Path(location)
  metadata = read_metadata(root)
  names = tuple(metadata["class_names"])
  label_columns = {name: tuple(values)
                   for name, values in metadata.get("label_columns", {}).items()}
  splits = {}
  for split, info in metadata["splits"].items():
    rows = metadata["records"][split]
    label_lists = [row["labels"] for row in rows]
    columns = {name: np.array([row.get("columns", {}).get(name, -1) for row in rows], np.int64)
               for name in label_columns}
    source = PreparedSource(root / info["file"], label_lists, len(names), metadata["multi_label"],
                            [row["path"] for row in rows], columns)
    splits[split] = NativeSplit(source, np.array([l[0] for l in label_lists], np.int64))
  return NativeData(splits, names, image_size=metadata.get("image_size"),
                    multi_label=bool(metadata["multi_label"]), label_columns=label_columns)


SOURCES["prepared"] = open_prepared
