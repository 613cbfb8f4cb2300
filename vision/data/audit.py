"""Image-file audit: what is wrong with each file, normalisation to RGB, duplicates, the report.

    inspected = inspect_file("data/cat/001.jpg", Limits(max_pixels=89_478_485, min_size=10))
    inspected.image            # uint8 HWC RGB the right way up, or None when excluded
    inspected.findings         # [Finding(path, kind, reason, action), ...]
    findings, stats = near_duplicate_findings(entries, limits)  # one finding per group
    write_audit(out_dir, report, thumbnail)  # audit.json + audit.html (bounded, thumbnails inline)

Every finding names the file, a `kind` (a stable key such as `truncated` or
`leakage`), a human `reason` and the `action` taken: `excluded` (the file is
not in the prepared dataset), `normalised` (converted to RGB / rotated) or
`reported` (kept; for the user to judge). A near-duplicate finding stands for a
group and lists its files in `members`. Source files are only ever read.

Near duplicates are found in two stages. Candidates: pairs whose 64-bit
perceptual hashes (imagehash pHash) lie within `near_duplicate_distance` bits,
found by multi-index hashing (Norouzi, Punjani & Fleet, "Fast Search in Hamming
Space with Multi-Index Hashing", CVPR 2012): no all-pairs scan. Confirmation: the
largest local difference left between 32x32 greyscale signatures once one is
registered onto the other (sub-pixel shift, brightness and contrast;
`pixel_difference`) is at most `near_duplicate_difference`; a 64-bit hash alone
calls different small objects (a sandal and a sneaker in Fashion-MNIST)
near duplicates. Confirmed pairs are joined into groups (connected components).
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
from typing import Callable, Sequence

import imagehash
import numpy as np
from PIL import Image
import scipy.fft
from scipy import ndimage, sparse
from scipy.sparse import csgraph

from vision.data.decode import DEFAULT_MAX_PIXELS, DecodeError, decode
from vision.files import write_text_atomically

EXCLUDED, NORMALISED, REPORTED = "excluded", "normalised", "reported"
_THUMBNAIL = 96
SIGNATURE_SIDE = 32  # pHash's own working size: the signature is exactly what pHash transforms


@dataclasses.dataclass(frozen=True)
class Limits:
  """What the audit accepts: a decompression-bomb guard and a minimum side."""
  max_pixels: int = DEFAULT_MAX_PIXELS  # Pillow's own default cap
  min_size: int = 10            # shorter side, pixels (Ultralytics rejects < 10 px too)
  near_duplicate_distance: int = 4  # candidates: perceptual-hash Hamming distance (of 64 bits)
  near_duplicate_difference: float = 0.07  # confirmed: `pixel_difference` at most this


@dataclasses.dataclass(frozen=True)
class Finding:
  """One finding; `members` lists every file of a group finding (near duplicates), else empty."""
  path: str
  kind: str
  reason: str
  action: str
  members: tuple[str, ...] = ()

  def to_dict(self) -> dict:
    """The JSON form: `members` only where there is a group."""
    record = {"path": self.path, "kind": self.kind, "reason": self.reason, "action": self.action}
    if self.members:
      record["members"] = list(self.members)
    return record


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
  signature: np.ndarray | None = None  # (32, 32) uint8, see `pixel_signature`


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
  signature = pixel_signature(Image.fromarray(decoded.image))
  phash = str(imagehash.phash(Image.fromarray(signature)))  # the same as imagehash.phash(rgb)
  return Inspected(path, decoded.image, findings, hashlib.sha256(raw).hexdigest(), phash,
                   decoded.mode, (width, height), signature)


# ----------------------------------------------------------------- duplicates


@dataclasses.dataclass(frozen=True)
class Entry:
  """A kept image as the duplicate search sees it."""
  path: str
  split: str
  labels: tuple[str, ...]
  sha256: str
  phash: str
  signature: np.ndarray  # (32, 32) uint8, see `pixel_signature`


def exact_duplicate_groups(entries: Sequence[Entry]) -> list[list[int]]:
  """Indices of entries sharing a content hash, groups of two or more, in input order."""
  groups: dict[str, list[int]] = collections.defaultdict(list)
  for index, entry in enumerate(entries):
    groups[entry.sha256].append(index)
  return [g for g in groups.values() if len(g) > 1]


def pixel_signature(image: Image.Image) -> np.ndarray:
  """(32, 32) uint8: the image as Pillow's 'L' luma, LANCZOS-resized, exactly as pHash sees it."""
  return np.asarray(image.convert("L").resize((SIGNATURE_SIDE, SIGNATURE_SIDE),
                                              Image.Resampling.LANCZOS), dtype=np.uint8)


# The confirming measure's settings, chosen from data (README, "Near duplicates"): on 32x32
# signatures, in signature pixels and fractions of the 0-255 range.
_BLUR_SIGMA = 0.5          # takes the edge off re-encoding noise; keeps seams and stripes
_MAX_SHIFT = 2.0           # registration reach each way (6% of the side)
_BORDER = 3                # pixels left out at each edge after registration (wrap-around)
_GAIN = (0.8, 1.25)        # contrast edits forgiven
_OFFSET = 0.1              # brightness edits forgiven


def _registration(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Sub-pixel translation (dy, dx) that moves x onto y: phase correlation (Kuglin & Hines,
  1975) within `_MAX_SHIFT`, refined by a parabola through the peak and its neighbours."""
  count, side = x.shape[0], x.shape[-1]
  window = np.outer(np.hanning(side), np.hanning(side)).astype(np.float32)
  fx = scipy.fft.rfft2((x - x.mean(axis=(1, 2), keepdims=True)) * window)
  fy = scipy.fft.rfft2((y - y.mean(axis=(1, 2), keepdims=True)) * window)
  cross = fy * np.conj(fx)
  cross /= np.abs(cross) + 1e-12
  correlation = scipy.fft.irfft2(cross, s=(side, side))
  reach = int(np.ceil(_MAX_SHIFT)) + 1
  offsets = np.arange(-reach, reach + 1)
  near = correlation[:, offsets[:, None] % side, offsets[None, :] % side]
  inner = near[:, 1:-1, 1:-1].reshape(count, -1).argmax(axis=1)
  row, col = np.unravel_index(inner, (2 * reach - 1, 2 * reach - 1))
  row, col, index = row + 1, col + 1, np.arange(count)

  def vertex(before, peak, after):  # of the parabola through three samples, in [-0.5, 0.5]
    curvature = before - 2 * peak + after
    safe = np.where(np.abs(curvature) > 1e-9, curvature, 1.0)
    return np.clip(np.where(np.abs(curvature) > 1e-9, 0.5 * (before - after) / safe, 0.0),
                   -0.5, 0.5)
  peak = near[index, row, col]
  dy = offsets[row] + vertex(near[index, row - 1, col], peak, near[index, row + 1, col])
  dx = offsets[col] + vertex(near[index, row, col - 1], peak, near[index, row, col + 1])
  return np.clip(dy, -_MAX_SHIFT, _MAX_SHIFT), np.clip(dx, -_MAX_SHIFT, _MAX_SHIFT)


def _translate(x: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
  """x moved by (dy, dx) pixels (sub-pixel: Fourier shift theorem; the edges wrap around)."""
  side = x.shape[-1]
  rows = np.exp(-2j * np.pi * np.outer(dy, scipy.fft.fftfreq(side))).astype(np.complex64)
  cols = np.exp(-2j * np.pi * np.outer(dx, scipy.fft.rfftfreq(side))).astype(np.complex64)
  return scipy.fft.irfft2(scipy.fft.rfft2(x) * rows[:, :, None] * cols[:, None, :],
                          s=(side, side))


def _residuals(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """What is left of b once matched from a, (P, 26, 26): see `pixel_difference`."""
  def smooth(signature: np.ndarray) -> np.ndarray:
    return ndimage.gaussian_filter(signature.astype(np.float32) / 255,
                                   (0, _BLUR_SIGMA, _BLUR_SIGMA), mode="nearest")
  x, y = smooth(a), smooth(b)
  x = _translate(x, *_registration(x, y))
  inner = slice(_BORDER, x.shape[-1] - _BORDER)
  x, y = x[:, inner, inner], y[:, inner, inner]
  x_mean, y_mean = x.mean(axis=(1, 2), keepdims=True), y.mean(axis=(1, 2), keepdims=True)
  spread = ((x - x_mean) ** 2).sum(axis=(1, 2), keepdims=True)
  gain = ((x - x_mean) * (y - y_mean)).sum(axis=(1, 2), keepdims=True) / np.maximum(spread, 1e-9)
  gain = np.clip(gain, *_GAIN)
  offset = np.clip(y_mean - gain * x_mean, -_OFFSET, _OFFSET)
  return y - gain * x - offset


def pixel_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """How different pairs of images look: (P, 32, 32) uint8 signatures each → (P,) in [0, 1].

  b is matched from a: both lightly blurred, a moved onto b by a sub-pixel translation of up
  to 2 signature pixels (6% of the side; phase correlation), then scaled and offset as a
  brightness/contrast edit would be (gain 0.8-1.25, offset up to 0.1; least squares), over
  the centre (3 pixels left out at each edge). The result is the largest mean absolute
  difference left in any 3x3-pixel window (about 9% of the side), as a fraction of the 0-255
  range: a re-encoded, shifted or resized copy leaves a thin spread of noise, a different
  neckline or sole a local blot. 0 is the same picture; measured at one fixed size, it means
  the same for a 28-px and a 4000-px image.
  """
  left = np.abs(_residuals(a, b))
  rows = left[:, :-2] + left[:, 1:-1] + left[:, 2:]
  return (rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:]).max(axis=(1, 2)) / 9


def hash_candidates(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
  """Pairs of 64-bit hashes within `max_distance` bits: (P, 2) indices i < j, (P,) distances.

  Multi-index hashing (Norouzi et al., CVPR 2012): the 64 bits are cut into max_distance + 1
  bands; two hashes within max_distance bits agree exactly on at least one band (pigeonhole),
  so only hashes sharing a band value are compared. The cost is the sum of the squared bucket
  sizes (about linear in N while the hashes spread), not N². `hashes`: (N,) uint64.
  """
  count = len(hashes)
  if count < 2 or max_distance < 0:
    return np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
  bands = min(max_distance + 1, 64)
  widths = [64 // bands + (band < 64 % bands) for band in range(bands)]
  found = []
  for shift, width in zip(np.cumsum([0] + widths[:-1]), widths):
    keys = (hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)
    order = np.argsort(keys, kind="stable")
    starts = np.flatnonzero(np.diff(keys[order])) + 1
    ends = np.append(starts, count)
    run_end = np.repeat(ends, np.diff(np.concatenate(([0], ends))))  # per sorted position
    active = np.flatnonzero(run_end - np.arange(count) > 1)
    offset = 1
    while active.size:  # position p against p + offset within its run of equal keys
      i, j = order[active], order[active + offset]
      close = np.bitwise_count(hashes[i] ^ hashes[j]) <= max_distance
      found.append(np.stack([np.minimum(i, j)[close], np.maximum(i, j)[close]], axis=1))
      offset += 1
      active = active[run_end[active] - active > offset]
  pairs = np.unique(np.concatenate(found), axis=0) if found else np.zeros((0, 2), np.int64)
  return pairs, np.bitwise_count(hashes[pairs[:, 0]] ^ hashes[pairs[:, 1]]).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class NearDuplicateGroup:
  """Entries (indices, input order) joined by confirmed pairs; the largest distances inside."""
  members: tuple[int, ...]
  hash_distance: int
  difference: float


def near_duplicate_groups(entries: Sequence[Entry], limits: Limits = Limits(),
                          chunk: int = 4096) -> tuple[list[NearDuplicateGroup], dict]:
  """Candidates by pHash, confirmed by `pixel_difference`, joined into connected components.

  Returns the groups (two or more members, in input order) and counts: candidate and
  confirmed pairs, groups and images in them.
  """
  stats = {"hash_distance": limits.near_duplicate_distance,
           "difference": limits.near_duplicate_difference,
           "candidate_pairs": 0, "confirmed_pairs": 0, "groups": 0, "images": 0}
  if len(entries) < 2 or limits.near_duplicate_distance < 0:
    return [], stats
  hashes = np.array([int(e.phash, 16) for e in entries], dtype=np.uint64)
  pairs, distances = hash_candidates(hashes, limits.near_duplicate_distance)
  content = np.unique([e.sha256 for e in entries], return_inverse=True)[1]
  same = content[pairs[:, 0]] == content[pairs[:, 1]]  # exact copies are findings of their own
  pairs, distances = pairs[~same], distances[~same]
  differences = np.zeros(len(pairs), np.float32)
  for start in range(0, len(pairs), chunk):
    part = pairs[start:start + chunk]
    differences[start:start + chunk] = pixel_difference(
        np.stack([entries[i].signature for i in part[:, 0]]),
        np.stack([entries[j].signature for j in part[:, 1]]))
  confirmed = differences <= limits.near_duplicate_difference
  stats["candidate_pairs"], stats["confirmed_pairs"] = len(pairs), int(confirmed.sum())
  pairs, distances, differences = pairs[confirmed], distances[confirmed], differences[confirmed]
  graph = sparse.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])),
                            shape=(len(entries), len(entries)))
  _, component = csgraph.connected_components(graph, directed=False)
  sizes = np.bincount(component)
  largest_distance = np.zeros(len(sizes), np.int64)
  largest_difference = np.zeros(len(sizes), np.float32)
  np.maximum.at(largest_distance, component[pairs[:, 0]], distances)
  np.maximum.at(largest_difference, component[pairs[:, 0]], differences)
  members: dict[int, list[int]] = collections.defaultdict(list)
  for index in np.flatnonzero(sizes[component] > 1):
    members[int(component[index])].append(int(index))
  groups = [NearDuplicateGroup(tuple(m), int(largest_distance[c]), float(largest_difference[c]))
            for c, m in members.items()]
  groups.sort(key=lambda g: g.members[0])
  stats["groups"], stats["images"] = len(groups), sum(len(g.members) for g in groups)
  return groups, stats


def _group_finding(entries: Sequence[Entry], group: NearDuplicateGroup) -> Finding:
  members = [entries[i] for i in group.members]
  splits = list(dict.fromkeys(m.split for m in members))
  labels = collections.Counter("/".join(m.labels) for m in members)
  if len(labels) > 1:
    kind = "conflicting-labels"
  else:
    kind = "within-split" if len(splits) == 1 else "leakage"
  where = (f"in split {splits[0]}" if len(splits) == 1
           else f"across splits {', '.join(splits)} (leakage)")
  label_text = "" if len(labels) == 1 else "; labels differ: " + ", ".join(
      f"{label} ×{count}" for label, count in labels.most_common())
  reason = (f"{len(members)} near-identical images (pixel difference ≤ {group.difference:.3f}, "
            f"perceptual-hash distance ≤ {group.hash_distance}) {where}{label_text}")
  return Finding(members[0].path, f"near-duplicate-{kind}", reason, REPORTED,
                 tuple(m.path for m in members))


def near_duplicate_findings(entries: Sequence[Entry],
                            limits: Limits = Limits()) -> tuple[list[Finding], dict]:
  """One reported finding per near-duplicate group (within a split, across splits, with other
  labels), and the counts of `near_duplicate_groups`."""
  groups, stats = near_duplicate_groups(entries, limits)
  return [_group_finding(entries, group) for group in groups], stats


# --------------------------------------------------------------------- report


def class_statistics(counts: dict[str, int]) -> dict:
  """Counts per class and the imbalance ratio (largest / smallest non-empty class)."""
  present = [c for c in counts.values() if c]
  ratio = (max(present) / min(present)) if present else None
  return {"counts": dict(counts), "imbalance_ratio": ratio}


def summarise(findings: Sequence[Finding]) -> dict[str, int]:
  return dict(sorted(collections.Counter(f.kind for f in findings).items()))


def thumbnail_uri(image: np.ndarray) -> str:
  """A small picture of `image` (at most 96 px) as a data: URI, the HTML report needs no other
  file: PNG, or JPEG where that is smaller (photos)."""
  pil = Image.fromarray(image)
  pil.thumbnail((_THUMBNAIL, _THUMBNAIL))
  encoded = []
  for kind, options in (("png", {}), ("jpeg", {"quality": 85})):
    buffer = io.BytesIO()
    pil.save(buffer, format=kind.upper(), **options)
    encoded.append((len(buffer.getvalue()), kind, buffer.getvalue()))
  _, kind, data = min(encoded)
  return f"data:image/{kind};base64," + base64.b64encode(data).decode("ascii")


# The HTML report is bounded whatever the dataset's size: at most this many findings per kind
# (the largest groups first), this many pictures per group, and this many characters of inline
# pictures in all; audit.json has everything.
HTML_EXAMPLES_PER_KIND = 20
HTML_MEMBERS_SHOWN = 8
HTML_PICTURE_BUDGET = 8_000_000
_HTML_TEXT_LIMIT = 600  # characters of a reason or a path shown


def write_audit(out: pathlib.Path, report: dict,
                thumbnail: Callable[[str], str | None] = lambda path: None) -> None:
  """`out/audit.json` (the report) and `out/audit.html` (its summary for people, with pictures).

  `thumbnail(path)` gives a data: URI of a file's picture (or None); it is called only for
  the examples the page shows.
  """
  write_text_atomically(out / "audit.json", json.dumps(report, indent=2))
  write_text_atomically(out / "audit.html", render_html(report, thumbnail))


def _clip(text: str) -> str:
  return text if len(text) <= _HTML_TEXT_LIMIT else text[:_HTML_TEXT_LIMIT] + "…"


class _Pictures:
  """Inline pictures until the budget is spent, then a dash."""

  def __init__(self, thumbnail: Callable[[str], str | None], budget: int):
    self.thumbnail, self.budget = thumbnail, budget

  def __call__(self, path: str) -> str:
    uri = self.thumbnail(path) if self.budget > 0 else None
    if not uri or len(uri) > self.budget:
      return "&mdash;"
    self.budget -= len(uri)
    return f'<img src="{uri}" alt="" title="{html.escape(_clip(path))}">'


def _example_row(finding: dict, picture: _Pictures) -> str:
  esc = html.escape
  members = finding.get("members") or [finding["path"]]
  figures = "".join(
      f'<figure>{picture(member)}<figcaption>{esc(_clip(member))}</figcaption></figure>'
      for member in members[:HTML_MEMBERS_SHOWN])
  more = len(members) - HTML_MEMBERS_SHOWN
  if more > 0:
    figures += f"<p>and {more} more (audit.json)</p>"
  return (f'<tr class="{esc(finding["action"])}"><td class="pictures">{figures}</td>'
          f'<td>{esc(finding["action"])}</td><td>{esc(_clip(finding["reason"]))}</td></tr>')


def render_html(report: dict, thumbnail: Callable[[str], str | None] = lambda path: None) -> str:
  """The report as one self-contained page: counts per kind, then up to
  `HTML_EXAMPLES_PER_KIND` examples of each; its size does not grow with the dataset."""
  esc = html.escape
  by_kind: dict[str, list[dict]] = collections.defaultdict(list)
  for finding in report["findings"]:
    by_kind[finding["kind"]].append(finding)
  picture = _Pictures(thumbnail, HTML_PICTURE_BUDGET)
  count_rows, sections = [], []
  rank = {EXCLUDED: 0, REPORTED: 1, NORMALISED: 2}  # what needs a person's eye first
  for kind, findings in sorted(by_kind.items(),
                               key=lambda item: (rank.get(item[1][0]["action"], 3), item[0])):
    images = sum(len(f.get("members") or [f["path"]]) for f in findings)
    shown = sorted(findings, key=lambda f: -len(f.get("members") or ()))[:HTML_EXAMPLES_PER_KIND]
    count_rows.append(f'<tr class="{esc(findings[0]["action"])}"><td><a href="#{esc(kind)}">'
                      f'{esc(kind)}</a></td><td>{esc(findings[0]["action"])}</td>'
                      f'<td>{len(findings)}</td><td>{images}</td><td>{len(shown)}</td></tr>')
    sections.append(f'<h3 id="{esc(kind)}">{esc(kind)}: {len(shown)} of {len(findings)} shown</h3>'
                    '<table><tr><th>files</th><th>action</th><th>reason</th></tr>'
                    + "".join(_example_row(f, picture) for f in shown) + "</table>")
  split_rows = []
  for split, stats in report["splits"].items():
    counts = ", ".join(f"{esc(k)}: {v}" for k, v in stats["class_counts"].items())
    ratio = stats["imbalance_ratio"]
    split_rows.append(f"<tr><td>{esc(split)}</td><td>{stats['count']}</td><td>{counts}</td>"
                      f"<td>{'&mdash;' if ratio is None else f'{ratio:.2f}'}</td></tr>")
  near = report.get("near_duplicates")
  near_text = "" if not near else (
      f"<p>Near duplicates: {near['candidate_pairs']} candidate pairs within "
      f"{near['hash_distance']} bits of perceptual hash, {near['confirmed_pairs']} confirmed at a "
      f"pixel difference of at most {near['difference']}, in {near['groups']} groups of "
      f"{near['images']} images.</p>")
  return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Data audit: {esc(report['source'])}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; margin-bottom: 2em; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: middle; }}
tr.excluded td {{ background: #fde8e8; }} tr.normalised td {{ background: #eef6ff; }}
tr.reported td {{ background: #fff8e1; }}
figure {{ display: inline-block; margin: 2px; max-width: {_THUMBNAIL + 40}px; }}
figcaption {{ font-size: 70%; overflow-wrap: anywhere; }}
img {{ max-width: {_THUMBNAIL}px; max-height: {_THUMBNAIL}px; min-width: 48px;
       image-rendering: pixelated; }}
</style></head><body>
<h1>Data audit</h1>
<p>Source <code>{esc(report['source'])}</code>: {report['files_seen']} files seen,
{report['files_kept']} kept, {report['files_excluded']} excluded.</p>
{near_text}
<h2>Splits and classes</h2>
<table><tr><th>split</th><th>images</th><th>per class</th><th>imbalance ratio</th></tr>
{''.join(split_rows)}</table>
<h2>Findings ({len(report['findings'])})</h2>
<p>At most {HTML_EXAMPLES_PER_KIND} examples per kind (the largest groups first) and
{HTML_MEMBERS_SHOWN} pictures per group are shown; <code>audit.json</code> lists every finding.</p>
<table><tr><th>kind</th><th>action</th><th>findings</th><th>images</th><th>shown</th></tr>
{''.join(count_rows) or '<tr><td colspan="5">no findings</td></tr>'}</table>
{''.join(sections)}
</body></html>
"""
