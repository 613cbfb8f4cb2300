"""Prepare a dataset once: list, audit, normalise, de-duplicate, split and write array_record.

    report = prepare("folder:photos", "data/photos", PrepareOptions())
    report["summary"]          # {'truncated': 1, 'leakage': 2, ...}; also DIR/audit.json, .html

Sources: `folder:PATH` (class sub-folders, optionally under train/ val|valid|validation/
test/), `csv:FILE` (columns `path,label[,split]`; `;` separates the labels of a
multi-label image; paths relative to the CSV; every further column is one more
label per image, e.g. `garment`, which a multi-task head reads as
`column:garment`) and `labelstudio:FILE` (a Label Studio JSON export of an
image-classification project with `choices`), listed by vision/data/listing.py
and decoded by vision/data/decode.py exactly as training's sources do; the class
structure is checked as theirs is (vision/data/structure.py).

The output directory holds one `SPLIT.array_record` per split (each record a
small JSON header, then the image as lossless PNG, RGB, the right way up) and
`metadata.json` (class names, splits, counts, per-record paths, labels and
content hashes). Training reads it as `prepared:DIR` (vision/data/prepared.py).
Missing val/test splits are carved from train (seeded, stratified) before the
leakage check, so the splits written never share an image. Source files are
only ever read.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import io
import json
import logging
import os
import pathlib
import struct
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from vision.data import audit
from vision.data.decode import decode_image
from vision.data.listing import SPLITS, Item, Listing, list_source
from vision.data.sources import SourceError, stratified_split
from vision.data.structure import check_classes
from vision.files import write_atomically, write_text_atomically

log = logging.getLogger(__name__)

FORMAT = "vision.prepared/1"
METADATA = "metadata.json"


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
  limits: audit.Limits = audit.Limits()
  val_fraction: float = 0.1
  test_fraction: float = 0.1
  split_seed: int = 0


# ------------------------------------------------------------------- records


def encode_png(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
  return buffer.getvalue()


def encode_record(png: bytes, header: dict) -> bytes:
  """4-byte header length, the JSON header, then the image as PNG."""
  head = json.dumps(header).encode("utf-8")
  return struct.pack("<I", len(head)) + head + png


def decode_record(record: bytes) -> tuple[np.ndarray, dict]:
  (length,) = struct.unpack_from("<I", record)
  header = json.loads(record[4:4 + length])
  return decode_image(record[4 + length:], where=header.get("path", "record")), header


def _write_records(path: pathlib.Path, records: Sequence[bytes]) -> None:
  from array_record.python.array_record_module import ArrayRecordWriter  # pylint: disable=import-outside-toplevel

  def write(tmp: pathlib.Path) -> None:
    writer = ArrayRecordWriter(str(tmp), "group_size:1")
    for record in records:
      writer.write(record)
    writer.close()
  write_atomically(path, write)


# ------------------------------------------------------------------- prepare


@dataclasses.dataclass
class Kept:
  """A usable image; held as PNG bytes, not pixels, so large datasets fit in memory."""
  item: Item
  inspected: audit.Inspected  # its `image` is dropped once encoded
  split: str | None
  png: bytes = b""
  height: int = 0
  width: int = 0


def _check_output(out: pathlib.Path, listing: Listing) -> None:
  out = out.resolve()
  if listing.root is not None:
    root = listing.root.resolve()
    if out == root or root in out.parents:
      raise SourceError(f"--out {out} is inside the source folder {root}; the source is never "
                        "modified, choose a directory outside it")
  if out.exists() and any(out.iterdir()) and not (out / METADATA).exists():
    raise SourceError(f"--out {out} exists and is not a prepared dataset; choose an empty or "
                      "new directory")


def _drop_conflicts_and_copies(kept: list[Kept]) -> tuple[list[Kept], list[audit.Finding]]:
  """Exact copies: all copies with conflicting labels go; otherwise the first copy per split stays."""
  findings, drop = [], set()
  groups = collections.defaultdict(list)
  for index, entry in enumerate(kept):
    groups[entry.inspected.sha256].append(index)
  for indices in groups.values():
    if len(indices) < 2:
      continue
    if len({(kept[i].item.labels, kept[i].item.columns) for i in indices}) > 1:
      labels = {kept[i].item.path: "/".join(kept[i].item.labels) for i in indices}
      for i in indices:
        others = ", ".join(f"{p} ({l})" for p, l in labels.items() if p != kept[i].item.path)
        findings.append(audit.Finding(
            kept[i].item.path, "duplicate-conflicting-labels",
            f"exact duplicate (same content hash) with another label: {others}; the label is "
            f"ambiguous, every copy excluded", audit.EXCLUDED))
        drop.add(i)
      continue
    seen: dict[str | None, Kept] = {}
    for i in indices:
      split = kept[i].split
      if split in seen:
        findings.append(audit.Finding(
            kept[i].item.path, "duplicate-within-split",
            f"exact duplicate (same content hash) of {seen[split].item.path} in split "
            f"{split or 'train'}; the first copy is kept", audit.EXCLUDED))
        drop.add(i)
      else:
        seen[split] = kept[i]
  return [k for i, k in enumerate(kept) if i not in drop], findings


def _check_structure(source: str, class_names: Sequence[str], kept: Sequence[Kept],
                     native_splits: set[str]) -> None:
  """The class-structure checks every training source gets (vision/data/structure.py)."""
  index = {name: i for i, name in enumerate(class_names)}
  counts = {"train": np.zeros(len(class_names), np.int64)}
  for entry in kept:
    split_counts = counts.setdefault(entry.split, np.zeros(len(class_names), np.int64))
    for label in entry.item.labels:
      split_counts[index[label]] += 1
  for warning in check_classes(source, class_names, counts, native_splits=native_splits,
                               discovered=True):
    log.warning(warning)


def _carve(kept: list[Kept], class_names: Sequence[str], options: PrepareOptions) -> None:
  """Assigns a split to every entry; missing val/test are carved from train."""
  for entry in kept:
    if entry.split is None:
      entry.split = "train"
  present = {entry.split for entry in kept}
  index = {name: i for i, name in enumerate(class_names)}
  for split, fraction in (("test", options.test_fraction), ("val", options.val_fraction)):
    if split in present or fraction <= 0:
      continue
    pool = np.array([i for i, e in enumerate(kept) if e.split == "train"])
    labels = np.array([index[kept[i].item.labels[0]] for i in pool])
    count = max(1, round(fraction * len(pool)))
    _, taken = stratified_split(pool, labels, count, options.split_seed)
    for i in taken:
      kept[int(i)].split = split


def _drop_leakage(kept: list[Kept]) -> tuple[list[Kept], list[audit.Finding]]:
  """Exact copies in two splits: the copy in the later split (train < val < test) goes."""
  order = {name: i for i, name in enumerate(SPLITS)}
  first: dict[str, Kept] = {}
  findings, result = [], []
  for entry in sorted(kept, key=lambda e: order[e.split]):
    original = first.get(entry.inspected.sha256)
    if original is not None and original.split != entry.split:
      findings.append(audit.Finding(
          entry.item.path, "leakage",
          f"exact duplicate of {original.item.path} in split {original.split} (leakage between "
          f"{original.split} and {entry.split}); excluded from {entry.split}", audit.EXCLUDED))
      continue
    first.setdefault(entry.inspected.sha256, entry)
    result.append(entry)
  return result, findings


def _size_hint(kept: Sequence[Kept]) -> int | None:
  """The training input size to default to: the median shorter side of the images."""
  sides = [min(e.height, e.width) for e in kept]
  return int(np.median(sides)) if sides else None


def prepare(source: str, out: str, options: PrepareOptions = PrepareOptions(),
            progress: Callable[[int, int], None] | None = None) -> dict:
  """Prepares `source` into `out`; returns the audit report (also written to out/)."""
  listing = list_source(source)
  out_dir = pathlib.Path(out)
  _check_output(out_dir, listing)
  findings = [audit.Finding(s.path, s.kind, s.reason, audit.EXCLUDED) for s in listing.skipped]
  kept = []
  # Decoding and PNG encoding release the GIL: threads keep every core busy.
  with concurrent.futures.ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
    inspected_items = pool.map(lambda item: _inspect(item, options.limits), listing.items)
    for number, (inspected, entry) in enumerate(inspected_items, start=1):
      findings += inspected.findings
      if entry is not None:
        kept.append(entry)
      if progress:
        progress(number, len(listing.items))
  kept_before_dedupe = list(kept)
  kept, duplicate_findings = _drop_conflicts_and_copies(kept)
  if not kept:
    raise SourceError(f"no usable images in {source}: every file was excluded "
                      f"({audit.summarise(findings)})")
  native_splits = {entry.split or "train" for entry in kept}
  _carve(kept, listing.class_names, options)
  _check_structure(source, listing.class_names, kept, native_splits)
  kept, leakage = _drop_leakage(kept)
  findings += duplicate_findings + leakage
  entries = [audit.Entry(k.item.path, k.split, k.item.labels, k.inspected.sha256,
                         k.inspected.phash, k.inspected.signature) for k in kept]
  near_duplicates, near_stats = audit.near_duplicate_findings(entries, options.limits)
  findings += near_duplicates

  out_dir.mkdir(parents=True, exist_ok=True)
  metadata = _write_dataset(out_dir, source, listing.class_names, kept)
  report = _audit_report(source, listing, kept, findings, metadata)
  report["near_duplicates"] = near_stats
  audit.write_audit(out_dir, report, _thumbnail_lookup(kept_before_dedupe))
  return report


def _write_dataset(out: pathlib.Path, source: str, class_names: tuple[str, ...],
                   kept: list[Kept]) -> dict:
  index = {name: i for i, name in enumerate(class_names)}
  multi_label = any(len(k.item.labels) > 1 for k in kept)
  label_columns = _label_columns(kept)
  splits, records_meta = {}, {}
  for split in SPLITS:
    members = [k for k in kept if k.split == split]
    if not members:
      continue
    records, rows = [], []
    for k in members:
      header = {"path": k.item.path, "labels": [index[l] for l in k.item.labels],
                "sha256": k.inspected.sha256}
      if label_columns:
        header["columns"] = {c: label_columns[c].index(v) for c, v in k.item.columns}
      records.append(encode_record(k.png, header))
      rows.append({**header, "width": k.width, "height": k.height, "phash": k.inspected.phash})
    _write_records(out / f"{split}.array_record", records)
    counts = collections.Counter(l for k in members for l in k.item.labels)
    stats = audit.class_statistics({name: counts.get(name, 0) for name in class_names})
    splits[split] = {"file": f"{split}.array_record", "count": len(members),
                     "class_counts": stats["counts"], "imbalance_ratio": stats["imbalance_ratio"]}
    records_meta[split] = rows
  metadata = {"format": FORMAT, "source": source, "class_names": list(class_names),
              "multi_label": multi_label, "image_size": _size_hint(kept), "splits": splits,
              "records": records_meta}
  if label_columns:
    metadata["label_columns"] = {c: list(values) for c, values in label_columns.items()}
  write_text_atomically(out / METADATA, json.dumps(metadata))
  return metadata


def _label_columns(kept: list[Kept]) -> dict[str, tuple[str, ...]]:
  """Each extra CSV label column → its values, sorted (a value's index is its class)."""
  values: dict[str, set[str]] = collections.defaultdict(set)
  for k in kept:
    for column, value in k.item.columns:
      values[column].add(value)
  return {column: tuple(sorted(found)) for column, found in sorted(values.items())}


def _audit_report(source: str, listing: Listing, kept: list[Kept],
                  findings: list[audit.Finding], metadata: dict) -> dict:
  findings = sorted(findings, key=lambda f: (f.action != audit.EXCLUDED, f.kind, f.path))
  excluded = {f.path for f in findings if f.action == audit.EXCLUDED}
  total = collections.Counter()
  for split in metadata["splits"].values():
    total.update(split["class_counts"])
  return {
      "source": source,
      "files_seen": len(listing.items) + len(listing.skipped),
      "files_kept": len(kept),
      "files_excluded": len(excluded),
      "class_names": metadata["class_names"],
      "multi_label": metadata["multi_label"],
      "classes": audit.class_statistics({n: total.get(n, 0) for n in metadata["class_names"]}),
      "splits": metadata["splits"],
      "summary": audit.summarise(findings),
      "findings": [f.to_dict() for f in findings],
  }


def _inspect(item: Item, limits: audit.Limits) -> tuple[audit.Inspected, Kept | None]:
  inspected = audit.inspect_file(item.path, limits)
  image = inspected.image
  if image is None:
    return inspected, None
  entry = Kept(item, inspected, item.split, encode_png(image), image.shape[0], image.shape[1])
  inspected.image = None
  return inspected, entry


def _thumbnail_lookup(kept: list[Kept]) -> Callable[[str], str | None]:
  """Thumbnails made on demand (the report shows a bounded few) from the stored PNGs."""
  by_path = {entry.item.path: entry for entry in kept}

  def thumbnail(path: str) -> str | None:
    entry = by_path.get(path)
    if entry is None:
      return None
    return audit.thumbnail_uri(decode_image(entry.png, where=path))
  return thumbnail
