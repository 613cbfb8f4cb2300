"""A folder of unlabelled images as a record source, read without any class structure.

    pool = UnlabelledFolder.open("folder:unlabelled/")     # flat or nested, every visible file
    pool.relative_paths[:2], len(pool)
    pool[0]   # {'image': uint8 HWC, 'label': 0}, or {'image': 1×1 black, 'label': -1} if unreadable

An unreadable file (corrupt, truncated, not an image) never stops scoring: its
record carries label -1, the scorer drops it, and `unreadable()` says why.
"""

from __future__ import annotations

import pathlib

import numpy as np

from vision.data.decode import DecodeError, decode_image
from vision.data.errors import SourceError

UNREADABLE = -1


def list_files(root: pathlib.Path) -> list[pathlib.Path]:
  """Every visible file under `root`, at any depth, sorted (hidden files and folders skipped)."""
  return sorted(p for p in root.rglob("*") if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(root).parts))


class UnlabelledFolder:
  """The files of a folder, decoded on access; label 0, or -1 where decoding fails."""

  def __init__(self, root: pathlib.Path, files: list[pathlib.Path]):
    self.root, self._files = root, files

  @classmethod
  def open(cls, source: str) -> "UnlabelledFolder":
    kind, sep, location = source.partition(":")
    if not sep or kind != "folder":
      raise SourceError(f"--pool={source!r} must be folder:PATH (a folder of unlabelled images)")
    root = pathlib.Path(location)
    if not root.is_dir():
      raise SourceError(f"--pool: folder {root} does not exist")
    files = list_files(root)
    if not files:
      raise SourceError(f"--pool: folder {root} holds no files")
    return cls(root.resolve(), [f.resolve() for f in files])

  @property
  def paths(self) -> list[str]:
    return [str(f) for f in self._files]

  @property
  def relative_paths(self) -> list[str]:
    return [f.relative_to(self.root).as_posix() for f in self._files]

  def __len__(self) -> int:
    return len(self._files)

  def __getitem__(self, index: int) -> dict:
    try:
      return {"image": decode_image(self._files[index]), "label": 0}
    except DecodeError:
      return {"image": np.zeros((1, 1, 3), np.uint8), "label": UNREADABLE}

  def unreadable(self, indices) -> dict[str, str]:
    """{relative path: the decoder's reason} for the files at `indices` (those that scored -1)."""
    reasons = {}
    for index in indices:
      path = self._files[int(index)]
      relative = path.relative_to(self.root).as_posix()
      try:
        decode_image(path)
        reasons[relative] = "unreadable while scoring"
      except DecodeError as error:
        reasons[relative] = f"{error.kind}: {error.reason}"
    return reasons
