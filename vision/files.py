"""Atomic file writes: a crash or a kill never leaves a half-written file.

    write_text_atomically(workdir / "config.json", text)
    write_atomically(png_path, lambda tmp: figure.savefig(tmp, format="png"))
"""

from __future__ import annotations

import os
import pathlib
from typing import Callable
import uuid


def write_atomically(path: str | os.PathLike, write: Callable[[pathlib.Path], None]) -> None:
  """Calls `write(tmp)` on a sibling temporary file, then renames it onto `path`."""
  path = pathlib.Path(path)
  # Same directory, so os.replace is an atomic rename, never a copy.
  tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
  try:
    write(tmp)
    with open(tmp, "rb") as written:
      os.fsync(written.fileno())
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
  write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
