"""Image-file audit: what is wrong with each file, normalisation to RGB, duplicates, the report.

    inspected = inspect_file("data/cat/001.jpg", Limits(max_pixels=89_478_485, min_size=10))
    inspected.image            # uint8 HWC RGB the right way up, or None when excluded
    inspected.findings         # [Finding(path, kind, reason, action), ...]
    findings = duplicate_findings(entries)           # exact/near duplicates, leakage, conflicts
    write_audit(out_dir, report)                     # audit.json + audit.html (thumbnails inline)

Every finding names the file, a `kind` (a stable key such as `truncated` or
`leakage`), a human `reason` and the `action` taken: `excluded` (the file is
not in the prepared dataset), `normalised` (converted to RGB / rotated) or
`reported` (kept; for the user to judge). Source files are only ever read.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import hashlib
import html
import io
import json
import os
import pathlib
from typing import Sequence

import imagehash
import numpy as np
from PIL import Image

from vision.data.decode import DEFAULT_MAX_PIXELS, DecodeError, decode
from vision.files import write_text_atomically

EXCLUDED, NORMALISED, REPORTED = "excluded", "normalised", "reported"
_THUMBNAIL = 96


@dataclasses.dataclass(frozen=True)
class Limits:
  """What the audit accepts: a decompression-bomb guard and a minimum side."""
  max_pixels: int = DEFAULT_MAX_PIXELS  # Pillow's own default cap
  min_size: int = 10            # shorter side, pixels (Ultralytics rejects < 10 px too)
  near_duplicate_distance: int = 4  # perceptual-hash Hamming distance (of 64 bits)


@dataclasses.dataclass(frozen=True)
class Finding:
  path: str
  kind: str
  reason: str
  action: str


@dataclasses.dataclass
class Inspected:
  """One file after inspection: the normalised image (None when excluded) and findings."""
  path: str
  image: np.ndarray | None
  findings: list[Finding]
  sha256: str | None = None
  phash: str | None = None
  original_mode: str | None = None
  original_size: tuple[int, int] | None = None


def _excluded(path: str, kind: str, reason: str) -> Inspected:
  return Inspected(path, None, [Finding(path, kind, reason, EXCLUDED)])


def inspect_file(path: str | os.PathLike, limits: Limits = Limits()) -> Inspected:
  """Reads one file (never writes it) and returns its normalised image and findings.

  Decoding and normalisation are vision/data/decode.py's, as for every reader.
  """
  path = str(path)
  try:
    raw = pathlib.Path(path).read_bytes()
  except OSError as error:
    return _excluded(path, "unreadable", f"cannot read the file: {error.strerror or error}")
  try:
    decoded = decode(raw, where=path, max_pixels=limits.max_pixels)
  except DecodeError as error:
    return _excluded(path, error.kind, error.reason)
  width, height = decoded.size
  if min(width, height) < limits.min_size:
    return _excluded(path, "too-small", f"{width}x{height} is below the minimum side of "
                     f"{limits.min_size} pixels")
  findings = [Finding(path, kind, reason, NORMALISED) for kind, reason in decoded.conversions]
  phash = str(imagehash.phash(Image.fromarray(decoded.image)))
  return Inspected(path, decoded.image, findings, hashlib.sha256(raw).hexdigest(), phash,
                   decoded.mode, (width, height))


# ----------------------------------------------------------------- duplicates


@dataclasses.dataclass(frozen=True)
class Entry:
  """A kept image as the duplicate search sees it."""
  path: str
  split: str
  labels: tuple[str, ...]
  sha256: str
  phash: str


def exact_duplicate_groups(entries: Sequence[Entry]) -> list[list[int]]:
  """Indices of entries sharing a content hash, groups of two or more, in input order."""
  groups: dict[str, list[int]] = collections.defaultdict(list)
  for index, entry in enumerate(entries):
    groups[entry.sha256].append(index)
  return [g for g in groups.values() if len(g) > 1]


def near_duplicate_pairs(entries: Sequence[Entry], max_distance: int) -> list[tuple[int, int, int]]:
  """(i, j, distance) for perceptual hashes within `max_distance` bits, exact copies left out."""
  if len(entries) < 2 or max_distance < 0:
    return []
  bits = np.array([int(e.phash, 16) for e in entries], dtype=np.uint64)
  pairs = []
  # Row blocks keep memory at block × N while staying vectorised.
  for start in range(0, len(bits), 1024):
    block = bits[start:start + 1024]
    distance = np.bitwise_count(block[:, None] ^ bits[None, :])
    rows, cols = np.nonzero(distance <= max_distance)
    for i, j in zip(rows + start, cols):
      if i < j and entries[i].sha256 != entries[j].sha256:
        pairs.append((int(i), int(j), int(distance[i - start, j])))
  return pairs


def _pair_kind(a: Entry, b: Entry) -> str:
  if a.labels != b.labels:
    return "conflicting-labels"
  return "within-split" if a.split == b.split else "leakage"


def near_duplicate_findings(entries: Sequence[Entry], max_distance: int) -> list[Finding]:
  """Near duplicates reported (kept): within a split, across splits, with other labels."""
  findings = []
  for i, j, distance in near_duplicate_pairs(entries, max_distance):
    a, b = entries[i], entries[j]
    kind = _pair_kind(a, b)
    where = (f"in split {a.split}" if a.split == b.split
             else f"across splits {a.split}/{b.split} (leakage)")
    labels = "" if a.labels == b.labels else (
        f"; labels differ: {'/'.join(a.labels)} vs {'/'.join(b.labels)}")
    findings.append(Finding(b.path, f"near-duplicate-{kind}",
                            f"near duplicate of {a.path} (perceptual-hash distance {distance}) "
                            f"{where}{labels}", REPORTED))
  return findings


# --------------------------------------------------------------------- report


def class_statistics(counts: dict[str, int]) -> dict:
  """Counts per class and the imbalance ratio (largest / smallest non-empty class)."""
  present = [c for c in counts.values() if c]
  ratio = (max(present) / min(present)) if present else None
  return {"counts": dict(counts), "imbalance_ratio": ratio}


def summarise(findings: Sequence[Finding]) -> dict[str, int]:
  return dict(sorted(collections.Counter(f.kind for f in findings).items()))


def thumbnail_uri(image: np.ndarray) -> str:
  """A small PNG of `image` as a data: URI (the HTML report needs no other file)."""
  pil = Image.fromarray(image)
  pil.thumbnail((_THUMBNAIL, _THUMBNAIL))
  buffer = io.BytesIO()
  pil.save(buffer, format="PNG")
  return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def write_audit(out: pathlib.Path, report: dict, thumbnails: dict[str, str]) -> None:
  """`out/audit.json` (the report) and `out/audit.html` (the same, for people, with thumbnails)."""
  write_text_atomically(out / "audit.json", json.dumps(report, indent=2))
  write_text_atomically(out / "audit.html", render_html(report, thumbnails))


def render_html(report: dict, thumbnails: dict[str, str]) -> str:
  esc = html.escape
  rows = []
  for finding in report["findings"]:
    uri = thumbnails.get(finding["path"])
    thumb = f'<img src="{uri}" alt="">' if uri else "&mdash;"
    rows.append(f'<tr class="{esc(finding["action"])}"><td>{thumb}</td>'
                f'<td>{esc(finding["path"])}</td><td>{esc(finding["kind"])}</td>'
                f'<td>{esc(finding["action"])}</td><td>{esc(finding["reason"])}</td></tr>')
  split_rows = []
  for split, stats in report["splits"].items():
    counts = ", ".join(f"{esc(k)}: {v}" for k, v in stats["class_counts"].items())
    ratio = stats["imbalance_ratio"]
    split_rows.append(f"<tr><td>{esc(split)}</td><td>{stats['count']}</td><td>{counts}</td>"
                      f"<td>{'&mdash;' if ratio is None else f'{ratio:.2f}'}</td></tr>")
  summary = ", ".join(f"{esc(k)}: {v}" for k, v in report["summary"].items()) or "no findings"
  return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Data audit: {esc(report['source'])}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; margin-bottom: 2em; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: middle; }}
tr.excluded td {{ background: #fde8e8; }} tr.normalised td {{ background: #eef6ff; }}
tr.reported td {{ background: #fff8e1; }}
img {{ max-width: {_THUMBNAIL}px; max-height: {_THUMBNAIL}px; image-rendering: pixelated; }}
</style></head><body>
<h1>Data audit</h1>
<p>Source <code>{esc(report['source'])}</code>: {report['files_seen']} files seen,
{report['files_kept']} kept, {report['files_excluded']} excluded. Findings: {summary}.</p>
<h2>Splits and classes</h2>
<table><tr><th>split</th><th>images</th><th>per class</th><th>imbalance ratio</th></tr>
{''.join(split_rows)}</table>
<h2>Findings ({len(report['findings'])})</h2>
<table><tr><th>image</th><th>file</th><th>kind</th><th>action</th><th>reason</th></tr>
{''.join(rows)}</table>
</body></html>
"""
