"""Prepare a dataset once: list, audit, normalise, de-duplicate, split and write array_record.

    report = prepare("folder:photos", "data/photos", PrepareOptions())
    report["summary"]          # {'truncated': 1, 'leakage': 2, ...}; also DIR/audit.json, .html

Sources: `folder:PATH` (class sub-folders, optionally under train/ val|valid/ test/),
`csv:FILE` (columns `path,label[,split]`; `;` separates the labels of a
multi-label image; paths relative to the CSV; every further column is one more
label per image, e.g. `garment`, which a multi-task head reads as
`column:garment`) and `labelstudio:FILE` (a Label Studio JSON export of an
image-classification project with `choices`).

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
import csv
import dataclasses
import io
import json
import os
import pathlib
import struct
from typing import Callable, Sequence
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np
from PIL import Image

from vision.data import audit
from vision.data.sources import SourceError, stratified_split
from vision.files import write_atomically, write_text_atomically

FORMAT = "vision.prepared/1"
METADATA = "metadata.json"
SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val",
                  "test": "test"}


@dataclasses.dataclass(frozen=True)
class Item:
  """One listed image: where it is, its label(s) and its split if the source gives one."""
  path: str
  labels: tuple[str, ...]
  split: str | None = None
  # Extra label columns of a CSV: (column, value) pairs, empty cells left out.
  columns: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class Listing:
  items: list[Item]
  class_names: tuple[str, ...]
  findings: list[audit.Finding]
  root: pathlib.Path | None = None  # a folder the output must not be written into


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
  limits: audit.Limits = audit.Limits()
  val_fraction: float = 0.1
  test_fraction: float = 0.1
  split_seed: int = 0


# ------------------------------------------------------------------- listing


def _visible_files(folder: pathlib.Path) -> list[pathlib.Path]:
  # Every file, not just image suffixes: a stray PDF in a class folder is a finding.
  return sorted(p for p in folder.rglob("*")
                if not any(part.startswith(".") for part in p.relative_to(folder).parts)
                and (p.is_file() or p.is_symlink()))


def list_folder(location: str) -> Listing:
  root = pathlib.Path(location)
  if not root.is_dir():
    raise SourceError(f"folder {root} does not exist")
  split_dirs = {_SPLIT_ALIASES[p.name]: p for p in sorted(root.iterdir())
                if p.is_dir() and p.name in _SPLIT_ALIASES}
  if "train" not in split_dirs:
    split_dirs = {None: root}
  items = []
  for split, folder in split_dirs.items():
    for class_dir in sorted(p for p in folder.iterdir()
                            if p.is_dir() and not p.name.startswith(".")):
      items += [Item(str(path), (class_dir.name,), split) for path in _visible_files(class_dir)]
  if not items:
    raise SourceError(f"{root} has no class sub-folders with files "
                      f"(expected {root}/CLASS/IMAGE or {root}/train/CLASS/IMAGE)")
  names = tuple(sorted({label for item in items for label in item.labels}))
  return Listing(items, names, [], root)


def _split_labels(text: str) -> tuple[str, ...]:
  return tuple(dict.fromkeys(t.strip() for t in text.split(";") if t.strip()))


def list_csv(location: str) -> Listing:
  path = pathlib.Path(location)
  if not path.is_file():
    raise SourceError(f"CSV file {path} does not exist")
  with open(path, newline="", encoding="utf-8-sig") as handle:
    reader = csv.DictReader(handle)
    columns = set(reader.fieldnames or ())
    if not {"path", "label"} <= columns:
      raise SourceError(f"{path} must have a header with columns 'path' and 'label' "
                        f"(optional 'split'); it has {sorted(columns)}")
    rows = list(reader)
  extra = [c for c in reader.fieldnames or () if c not in ("path", "label", "split")]
  if any(not c.strip() for c in extra):
    raise SourceError(f"{path} has a label column without a name in its header")
  items, findings = [], []
  for number, row in enumerate(rows, start=2):
    file = str((path.parent / row["path"].strip()).resolve()) if row["path"] else ""
    labels = _split_labels(row["label"] or "")
    split = (row.get("split") or "").strip().lower() or None
    if split is not None and split not in _SPLIT_ALIASES:
      raise SourceError(f"{path} line {number}: split {split!r} is not one of train, val, test")
    if not file or not labels:
      findings.append(audit.Finding(file or f"{path}:{number}", "unlabelled",
                                    f"{path} line {number} has no path or no label",
                                    audit.EXCLUDED))
      continue
    columns = tuple((c.strip(), (row[c] or "").strip()) for c in extra if (row[c] or "").strip())
    items.append(Item(file, labels, split and _SPLIT_ALIASES[split], columns))
  names = tuple(sorted({label for item in items for label in item.labels}))
  if not names:
    raise SourceError(f"{path} lists no labelled images")
  return Listing(items, names, findings)


def _labelstudio_path(reference: str, root: pathlib.Path) -> str:
  """A Label Studio image reference (upload, local-files, file://) → a local path."""
  parsed = urlparse(reference)
  if parsed.scheme in ("http", "https", "s3", "gs"):
    return reference  # reported as unreadable: remote images must be downloaded first
  if "d" in parse_qs(parsed.query):  # /data/local-files/?d=relative/path.jpg
    return str(root / unquote(parse_qs(parsed.query)["d"][0]))
  local = unquote(parsed.path)
  candidates = [pathlib.Path(local), root / local.lstrip("/"), root / pathlib.Path(local).name]
  # Uploads are stored as '<8 hex>-<original name>'.
  name = pathlib.Path(local).name
  if len(name) > 9 and name[8] == "-":
    candidates.append(root / name[9:])
  for candidate in candidates:
    if candidate.exists():
      return str(candidate)
  return str(candidates[1])


def _choices(task: dict) -> tuple[str, ...] | None:
  annotations = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
  if not annotations:
    return None
  # The most recent annotation wins, as in Label Studio's own exports.
  latest = max(annotations, key=lambda a: str(a.get("updated_at") or a.get("created_at") or ""))
  labels = []
  for result in latest.get("result") or []:
    if result.get("type") == "choices":
      labels += result.get("value", {}).get("choices", [])
  return tuple(dict.fromkeys(labels)) or None


def list_labelstudio(location: str, image_root: str | None = None) -> Listing:
  path = pathlib.Path(location)
  if not path.is_file():
    raise SourceError(f"Label Studio export {path} does not exist")
  try:
    tasks = json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as error:
    raise SourceError(f"{path} is not JSON ({error}); export the project as 'JSON'") from None
  if not isinstance(tasks, list):
    raise SourceError(f"{path} must hold a list of tasks (Label Studio's 'JSON' export)")
  root = pathlib.Path(image_root) if image_root else path.parent
  items, findings = [], []
  for task in tasks:
    data = task.get("data") or {}
    reference = data.get("image") or next((v for v in data.values() if isinstance(v, str)), None)
    if reference is None:
      raise SourceError(f"{path}: task {task.get('id')} has no image in 'data'")
    file = _labelstudio_path(reference, root)
    labels = _choices(task)
    if labels is None:
      findings.append(audit.Finding(file, "unlabelled", f"task {task.get('id')} has no "
                                    "(non-cancelled) annotation with choices", audit.EXCLUDED))
      continue
    items.append(Item(file, labels))
  names = tuple(sorted({label for item in items for label in item.labels}))
  if not names:
    raise SourceError(f"{path} has no annotated tasks")
  return Listing(items, names, findings)


LISTERS: dict[str, Callable[[str], Listing]] = {
    "folder": list_folder, "csv": list_csv, "labelstudio": list_labelstudio}


def list_source(source: str) -> Listing:
  kind, sep, location = source.partition(":")
  if not sep or kind not in LISTERS:
    raise SourceError(f"--source {source!r} is not one of: "
                      f"{', '.join(k + ':PATH' for k in LISTERS)}")
  return LISTERS[kind](location)


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
  with Image.open(io.BytesIO(record[4 + length:])) as image:
    return np.asarray(image.convert("RGB"), dtype=np.uint8), header


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
  thumbnail: str | None = None


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
  findings = list(listing.findings)
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
  _carve(kept, listing.class_names, options)
  kept, leakage = _drop_leakage(kept)
  findings += duplicate_findings + leakage
  entries = [audit.Entry(k.item.path, k.split, k.item.labels, k.inspected.sha256,
                         k.inspected.phash) for k in kept]
  findings += audit.near_duplicate_findings(entries, options.limits.near_duplicate_distance)

  out_dir.mkdir(parents=True, exist_ok=True)
  metadata = _write_dataset(out_dir, source, listing.class_names, kept)
  report = _audit_report(source, listing, kept, findings, metadata)
  thumbnails = _thumbnails(kept_before_dedupe, findings)
  audit.write_audit(out_dir, report, thumbnails)
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
      "files_seen": len(listing.items) + len(listing.findings),
      "files_kept": len(kept),
      "files_excluded": len(excluded),
      "class_names": metadata["class_names"],
      "multi_label": metadata["multi_label"],
      "classes": audit.class_statistics({n: total.get(n, 0) for n in metadata["class_names"]}),
      "splits": metadata["splits"],
      "summary": audit.summarise(findings),
      "findings": [dataclasses.asdict(f) for f in findings],
  }


def _inspect(item: Item, limits: audit.Limits) -> tuple[audit.Inspected, Kept | None]:
  inspected = audit.inspect_file(item.path, limits)
  image = inspected.image
  if image is None:
    return inspected, None
  entry = Kept(item, inspected, item.split, encode_png(image), image.shape[0], image.shape[1],
               audit.thumbnail_uri(image) if inspected.findings else None)
  inspected.image = None
  return inspected, entry


def _thumbnails(kept: list[Kept], findings: list[audit.Finding]) -> dict[str, str]:
  """Thumbnails of the decodable files with findings (excluded copies included)."""
  flagged = {f.path for f in findings}
  thumbnails = {}
  for entry in kept:
    if entry.item.path in flagged:
      if entry.thumbnail is None:  # a duplicate: flagged after inspection
        with Image.open(io.BytesIO(entry.png)) as image:
          entry.thumbnail = audit.thumbnail_uri(np.asarray(image.convert("RGB")))
      thumbnails[entry.item.path] = entry.thumbnail
  return thumbnails
