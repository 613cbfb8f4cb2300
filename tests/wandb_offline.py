"""Reads back what an offline W&B run wrote (test helper, not a test file).

wandb 0.31 offline writes only the binary transaction log
``workdir/wandb/offline-run-<YYYYmmdd_HHMMSS>-<id>[-<n>]/run-<id>.wandb``: no
``wandb-summary.json``/history file, and the old Python datastore reader and
``wandb sync --view`` are gone. This module parses that log directly.

File layout (wandb-core ``core/pkg/leveldb/record.go`` +
``core/internal/transactionlog``):

* A 7-byte W&B header: ident ``b":W&B"``, magic ``0xBEE1`` (uint16 LE),
  version byte ``0``.
* Then the LevelDB log format: 32 KiB blocks counted from the start of the file
  (so the first block holds 32 KiB - 7 bytes of chunks); each chunk is a 7-byte
  header -- checksum (uint32 LE), length (uint16 LE), type (1 FULL, 2 FIRST,
  3 MIDDLE, 4 LAST) -- plus the payload. A block tail shorter than a chunk
  header is zero padding. W&B deviates from LevelDB in the checksum: plain
  CRC-32 (IEEE, ``zlib.crc32``) of the type byte + payload, not masked CRC-32C.
* Each record's payload is a serialized ``wandb_internal_pb2.Record``.

wandb-core buffers a block in memory and writes it on close, so the file is only
complete once the run is finished; ``wait_for_run_file`` polls for the final
``exit`` record.

Usage::

    path = wandb_offline.wait_for_run_file(workdir)
    rows = wandb_offline.read_history(path)   # [{"_step": 0, "loss": ...}, ...]
    cfg = wandb_offline.read_config(path)
    summary = wandb_offline.read_summary(path)
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import struct
import time
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

from wandb.proto import wandb_internal_pb2

WANDB_HEADER = struct.pack("<4sHB", b":W&B", 0xBEE1, 0)
BLOCK_SIZE = 32 * 1024
CHUNK_HEADER_SIZE = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


# --- Locating the file -------------------------------------------------------


def _run_dir_sort_key(path: pathlib.Path) -> tuple[str, int]:
  """(timestamp, collision suffix) from ``[offline-]run-<ts>-<id>[-<n>]``."""
  run_id = path.stem[len("run-") :]
  match = re.fullmatch(
    rf"(?:offline-)?run-(\d{{8}}_\d{{6}})-{re.escape(run_id)}(?:-(\d+))?", path.parent.name
  )
  if not match:
    return (path.parent.name, 0)
  return (match.group(1), int(match.group(2) or 0))


def find_run_files(workdir: str | os.PathLike) -> list[pathlib.Path]:
  """All ``run-*.wandb`` files under ``workdir/wandb/``, oldest first.

  A resumed offline run gets a new run directory (and file) per process;
  the ``latest-run`` symlink is skipped.
  """
  root = pathlib.Path(workdir) / "wandb"
  files = [p for p in root.glob("*/run-*.wandb") if not p.parent.is_symlink() and p.is_file()]
  return sorted(files, key=_run_dir_sort_key)


def find_run_file(workdir: str | os.PathLike) -> pathlib.Path:
  """The single ``run-*.wandb`` file under ``workdir/wandb/``."""
  files = find_run_files(workdir)
  if len(files) != 1:
    raise FileNotFoundError(
      f"expected exactly one run-*.wandb under {workdir}/wandb, found {[str(f) for f in files]}"
    )
  return files[0]


# --- Framing -----------------------------------------------------------------


def iter_chunks(data: bytes, path: os.PathLike) -> Iterator[tuple[int, bytes]]:
  """(type, payload) per chunk; stops quietly at a truncated final chunk."""
  pos = len(WANDB_HEADER)
  while pos + CHUNK_HEADER_SIZE <= len(data):
    block_left = BLOCK_SIZE - pos % BLOCK_SIZE
    if block_left < CHUNK_HEADER_SIZE:
      pos += block_left  # Zero padding at the end of a block.
      continue
    checksum, length, chunk_type = struct.unpack_from("<IHB", data, pos)
    if checksum == length == chunk_type == 0:
      pos += block_left  # Zeroed rest of block (preallocated file).
      continue
    start = pos + CHUNK_HEADER_SIZE
    if length > block_left - CHUNK_HEADER_SIZE:
      raise ValueError(f"{path}: chunk at {pos} crosses its block")
    if start + length > len(data):
      return  # Truncated (still being written, or killed mid-write).
    payload = data[start : start + length]
    if zlib.crc32(bytes([chunk_type]) + payload) != checksum:
      raise ValueError(f"{path}: checksum mismatch in chunk at {pos}")
    yield chunk_type, payload
    pos = start + length


def _payloads(chunks: Iterable[tuple[int, bytes]], path: os.PathLike) -> Iterator[bytes]:
  """Reassembles FIRST/MIDDLE/LAST chunks into whole records."""
  parts: list[bytes] | None = None
  for chunk_type, payload in chunks:
    if chunk_type == FULL and parts is None:
      yield payload
    elif chunk_type == FIRST and parts is None:
      parts = [payload]
    elif chunk_type in (MIDDLE, LAST) and parts is not None:
      parts.append(payload)
      if chunk_type == LAST:
        yield b"".join(parts)
        parts = None
    else:
      raise ValueError(f"{path}: unexpected chunk type {chunk_type}")


def read_records(path: str | os.PathLike) -> list[wandb_internal_pb2.Record]:
  """Every record in a ``.wandb`` file, in order."""
  data = pathlib.Path(path).read_bytes()
  if data[: len(WANDB_HEADER)] != WANDB_HEADER:
    raise ValueError(f"{path}: not a W&B v0 transaction log: header {data[: len(WANDB_HEADER)]!r}")
  records = []
  for payload in _payloads(iter_chunks(data, path), path):
    record = wandb_internal_pb2.Record()
    record.ParseFromString(payload)
    records.append(record)
  return records


def wait_for_run_files(workdir: str | os.PathLike, count: int = 1,
                       timeout: float = 30.0) -> list[pathlib.Path]:
  """``find_run_files``, once there are ``count`` of them and each ends with its ``exit`` record.

  ``run.finish()`` can return before W&B's service has flushed the file on a
  loaded machine, so tests that read a run back wait for this.
  """
  deadline = time.monotonic() + timeout
  while True:
    try:
      paths = find_run_files(workdir)
      if len(paths) == count and all(
          (records := read_records(path)) and records[-1].WhichOneof("record_type") == "exit"
          for path in paths):
        return paths
    except (FileNotFoundError, ValueError):
      if time.monotonic() > deadline:
        raise
    if time.monotonic() > deadline:
      raise TimeoutError(f"not {count} finished W&B run(s) under {workdir}/wandb")
    time.sleep(0.05)


def wait_for_run_file(workdir: str | os.PathLike, timeout: float = 30.0) -> pathlib.Path:
  """``find_run_file``, once its last record is the run's ``exit`` record."""
  return wait_for_run_files(workdir, 1, timeout)[0]


# --- Decoding ----------------------------------------------------------------


def _value(item: Any) -> Any:
  """An item's value: the typed oneof (history items may carry one), else
  ``value_json`` decoded (json accepts wandb's NaN/Infinity spellings)."""
  has_typed_value = "value" in item.DESCRIPTOR.oneofs_by_name
  kind = item.WhichOneof("value") if has_typed_value else None
  if kind == "none":
    return None
  if kind == "json":
    return json.loads(item.json)
  if kind is not None:
    return getattr(item, kind)
  return json.loads(item.value_json)


def _set(target: dict, item: Any) -> None:
  """Applies one ``key``/``nested_key`` + value item to ``target``."""
  keys = [item.key] if item.key else list(item.nested_key)
  for key in keys[:-1]:
    target = target.setdefault(key, {})
  target[keys[-1]] = _value(item)


def _remove(target: dict, item: Any) -> None:
  keys = [item.key] if item.key else list(item.nested_key)
  for key in keys[:-1]:
    target = target.get(key, {})
  target.pop(keys[-1], None)


def read_history(path: str | os.PathLike) -> list[dict]:
  """One dict per history record: ``{"_step": int, key: value, ...}``.

  Values are JSON-decoded; W&B's own ``_runtime``/``_timestamp`` are included.
  """
  rows = []
  for record in read_records(path):
    if record.WhichOneof("record_type") != "history":
      continue
    row: dict = {}
    for item in record.history.item:
      _set(row, item)
    row["_step"] = int(row.get("_step", record.history.step.num))
    rows.append(row)
  return rows


def read_config(path: str | os.PathLike) -> dict:
  """The run config: the run record's config, then config records, merged."""
  config: dict = {}
  for record in read_records(path):
    kind = record.WhichOneof("record_type")
    if kind == "run":
      updates, removes = record.run.config.update, record.run.config.remove
    elif kind == "config":
      updates, removes = record.config.update, record.config.remove
    else:
      continue
    for item in updates:
      _set(config, item)
    for item in removes:
      _remove(config, item)
  return config


def read_summary(path: str | os.PathLike) -> dict:
  """The run summary: every summary record's updates/removes, merged."""
  summary: dict = {}
  for record in read_records(path):
    if record.WhichOneof("record_type") == "summary":
      for item in record.summary.update:
        _set(summary, item)
      for item in record.summary.remove:
        _remove(summary, item)
  return summary
