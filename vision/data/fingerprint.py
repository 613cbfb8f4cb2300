"""Split fingerprints: which items each split of a run holds, so a resume on other data is caught.

    prints = split_fingerprints(dataset, ("train", "val", "test"))
    check_unchanged(workdir, prints)     # raises SplitsChanged naming the split and the count
    write(workdir, prints)               # workdir/splits.json

An item is identified without decoding its image where the source allows:
its file path relative to the dataset's root (folder:, csv:, prepared:), the
bytes of its image (in-memory IDX arrays), or its index in the source split
(TFDS) — always with its label, so a relabelled file counts as changed. A
carved split (val/test cut from train) is fingerprinted by the items it
ended up with, so deleting one file, which re-carves the splits, shows up in
every split it moved items between.

`splits.json` holds, per split, the item count, a sha256 over the sorted item
hashes and the hashes themselves (8 bytes each, base64), enough to count the
items that came and went.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import hashlib
import json
import os
import pathlib
from typing import Iterable, Mapping, Sequence

import numpy as np

from vision.data.sources import Dataset, RecordSource, SourceError, SubsetSource, record_labels
from vision.files import write_text_atomically

SPLITS_FILE = "splits.json"
FORMAT = 1


class SplitsChanged(SourceError):
  """The data of a resumed run differs from the data it started on; one line."""


@dataclasses.dataclass(frozen=True)
class Fingerprint:
  """The items of one split: sorted 64-bit hashes of (identity, label)."""
  items: np.ndarray  # uint64 [N], sorted

  @property
  def digest(self) -> str:
    return hashlib.sha256(self.items.astype("<u8").tobytes()).hexdigest()

  def to_json(self) -> dict:
    return {"count": int(len(self.items)), "sha256": self.digest,
            "items": base64.b64encode(self.items.astype("<u8").tobytes()).decode("ascii")}

  @classmethod
  def from_json(cls, data: dict) -> "Fingerprint":
    return cls(np.frombuffer(base64.b64decode(data["items"]), "<u8").astype(np.uint64))

  def difference(self, other: "Fingerprint") -> tuple[int, int]:
    """(items in `other` not in self, items in self not in `other`), counted with multiplicity."""
    mine = collections.Counter(self.items.tolist())
    theirs = collections.Counter(other.items.tolist())
    return sum((theirs - mine).values()), sum((mine - theirs).values())


def _hash(payload: bytes) -> int:
  return int.from_bytes(hashlib.blake2b(payload, digest_size=8).digest(), "little")


def _labels(records: RecordSource) -> list:
  lists = getattr(records, "label_lists", None)
  return [tuple(l) for l in lists] if lists is not None else record_labels(records).tolist()


def _root(records: RecordSource) -> RecordSource:
  while isinstance(records, SubsetSource):
    records = records.base
  return records


def _item_hashes(records: RecordSource, path_root: str | None) -> np.ndarray:
  """uint64 [N]: one hash per record of a source's own split (not a subset), in order."""
  labels = _labels(records)
  paths = getattr(records, "paths", None)
  read_arrays = getattr(records, "read_arrays", None)
  if paths is not None:
    keys = (f"{os.path.relpath(p, path_root) if path_root else p}\0{l}".encode()
            for p, l in zip(paths, labels))
  elif read_arrays is not None:
    images, _ = read_arrays(np.arange(len(records)))
    keys = (np.ascontiguousarray(image).tobytes() + f"\0{l}".encode()
            for image, l in zip(images, labels))
  else:
    keys = (f"#{i}\0{l}".encode() for i, l in enumerate(labels))
  return np.fromiter((_hash(k) for k in keys), np.uint64, count=len(labels))


def _common_root(sources: Iterable[RecordSource]) -> str | None:
  """The directory every file of the dataset lies under, so a moved dataset keeps its prints."""
  paths = [p for source in sources for p in (getattr(source, "paths", None) or ())]
  if not paths:
    return None
  return os.path.dirname(os.path.commonpath([os.path.abspath(p) for p in paths]) + os.sep)


def split_fingerprints(dataset: Dataset, names: Sequence[str]) -> dict[str, Fingerprint]:
  """The fingerprint of each split of `dataset` named in `names` that the dataset has."""
  present = [name for name in dict.fromkeys(names) if name in dataset.splits]
  roots = {id(_root(dataset.splits[n])): _root(dataset.splits[n]) for n in present}
  path_root = _common_root(roots.values())
  cache: dict[int, np.ndarray] = {}

  def hashes(records: RecordSource) -> np.ndarray:
    if isinstance(records, SubsetSource):
      return hashes(records.base)[np.asarray(records.indices, np.int64)]
    if id(records) not in cache:
      cache[id(records)] = _item_hashes(records, path_root)
    return cache[id(records)]

  return {name: Fingerprint(np.sort(hashes(dataset.splits[name]))) for name in present}


def read(workdir: str | os.PathLike) -> dict[str, Fingerprint] | None:
  """The fingerprints recorded in `workdir`, or None when it has none (a run from before them)."""
  path = pathlib.Path(workdir) / SPLITS_FILE
  if not path.exists():
    return None
  try:
    data = json.loads(path.read_text())
    return {name: Fingerprint.from_json(split) for name, split in data["splits"].items()}
  except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
    raise SplitsChanged(f"{path} is unreadable ({error}); delete it to record the current "
                        "splits afresh, or use a new --workdir") from None


def check_unchanged(workdir: str | os.PathLike, current: Mapping[str, Fingerprint]) -> None:
  """Raises SplitsChanged when a split recorded in `workdir` now holds other items."""
  recorded = read(workdir)
  if recorded is None:
    return
  changes = []
  for name in sorted(set(recorded) | set(current)):
    if name not in current:
      changes.append(f"split '{name}' ({len(recorded[name].items)} items) is gone")
    elif name not in recorded:
      continue  # a split this run did not use before; nothing was trained or scored on it
    elif recorded[name].digest != current[name].digest:
      added, removed = recorded[name].difference(current[name])
      changes.append(f"split '{name}' has {max(added, removed)} changed items "
                     f"({added} new, {removed} gone; {len(current[name].items)} now, "
                     f"{len(recorded[name].items)} before)")
  if changes:
    raise SplitsChanged(
        f"the data differ from those this run in {workdir} started on: {'; '.join(changes)}. "
        "Its checkpoints and metrics belong to the old splits: restore the data, or train in "
        "a new --workdir")


def write(workdir: str | os.PathLike, prints: Mapping[str, Fingerprint]) -> None:
  """Records `prints` as `workdir/splits.json` (atomically)."""
  data = {"format": FORMAT, "splits": {name: fp.to_json() for name, fp in prints.items()}}
  write_text_atomically(pathlib.Path(workdir) / SPLITS_FILE, json.dumps(data, indent=1) + "\n")
