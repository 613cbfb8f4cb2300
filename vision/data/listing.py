"""Which image files a source names, with their labels and splits: folder, CSV, Label Studio.

    listing = list_source("folder:photos")      # or csv:labels.csv, labelstudio:export.json
    listing.items[0]        # Item(path='photos/train/cat/1.png', labels=('cat',), split='train')
    listing.class_names     # ('cat', 'dog'): sorted, every class folder (empty ones too)
    listing.skipped         # [Skipped(path, kind, reason)]: macOS '._' companions, unlabelled rows

Both readers of these sources use it: `experiments.prepare` (vision/data/prepare.py)
and training's `folder:`, `csv:` and `labelstudio:` sources (vision/data/sources.py),
so a folder means the same thing to both. Layouts:

  * `folder:DIR`: `DIR/CLASS/...` (flat; val/test carved later) or split folders
    `DIR/{train,val|valid|validation,test}/CLASS/...` (Roboflow, Ultralytics, Keras).
    Any other folder beside the split folders is an error naming it; files directly
    under DIR (README, data.yaml) are ignored; hidden files and folders are skipped,
    and macOS `._NAME` companions are counted in `skipped`.
  * `csv:FILE`: header `path,label[,split]`; `a;b` gives several labels (multi-label);
    paths are relative to the CSV; every further column is one more label per image
    (`Item.columns`; `experiments.prepare` keeps them for multi-task heads).
  * `labelstudio:FILE`: Label Studio's JSON export of an image-classification
    project (`choices`); the latest non-cancelled annotation wins.

Listing opens no image: files that do not decode are found by whoever reads them.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import pathlib
from typing import Callable
from urllib.parse import parse_qs, unquote, urlparse

from vision.data.errors import SourceError

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test"}
# Files a class folder may hold that are images to a person (others are still listed:
# a stray PDF is a finding); used to spot images left outside any class folder.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MACOS_COMPANION = "macos-companion"


@dataclasses.dataclass(frozen=True)
class Item:
  """One listed file: where it is, its label(s), its split if the source gives one.

  `origin` says where the label came from, for error messages ('labels.csv line 7').
  """
  path: str
  labels: tuple[str, ...]
  split: str | None = None
  origin: str = ""
  # Extra label columns of a CSV: (column, value) pairs, empty cells left out.
  columns: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class Skipped:
  """A listed entry that is not an item: `kind` is a stable key, `reason` says why."""
  path: str
  kind: str
  reason: str


@dataclasses.dataclass(frozen=True)
class Listing:
  items: list[Item]
  class_names: tuple[str, ...]
  skipped: list[Skipped]
  root: pathlib.Path | None = None  # a folder the output must not be written into


# -------------------------------------------------------------------- folder


def _visible_files(folder: pathlib.Path, skipped: list[Skipped]) -> list[pathlib.Path]:
  """Every non-hidden file under `folder`, sorted; hidden folders are not entered."""
  found = []
  for directory, subdirs, files in os.walk(folder):
    subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
    for name in files:
      path = pathlib.Path(directory) / name
      if name.startswith("._"):
        skipped.append(Skipped(str(path), MACOS_COMPANION,
                               "macOS resource-fork companion ('._' file), not an image"))
      elif not name.startswith("."):
        found.append(path)
  return sorted(found)


def _subfolders(folder: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _split_folders(root: pathlib.Path) -> dict[str | None, pathlib.Path]:
  """{split: folder} for a split layout, {None: root} for a flat one; errors name odd folders."""
  folders = _subfolders(root)
  named = [p for p in folders if p.name in SPLIT_ALIASES]
  if not named:
    return {None: root}
  others = [p.name for p in folders if p.name not in SPLIT_ALIASES]
  if others:
    raise SourceError(
        f"folder {root} has split folders ({', '.join(p.name + '/' for p in named)}) and "
        f"unknown folder(s) {', '.join(repr(o) for o in others)}: beside the splits only "
        "train/, val/ (or valid/, validation/) and test/ may be there; move or rename them")
  splits: dict[str | None, pathlib.Path] = {}
  for folder in named:
    split = SPLIT_ALIASES[folder.name]
    if split in splits:
      raise SourceError(f"folder {root} has both {splits[split].name}/ and {folder.name}/: "
                        f"two {split} splits; merge them into one")
    splits[split] = folder
  if "train" not in splits:
    raise SourceError(f"folder {root} has split folder(s) "
                      f"{', '.join(p.name + '/' for p in named)} but no train/; add "
                      f"{root}/train/CLASS/IMAGE")
  return splits


def list_folder(location: str) -> Listing:
  root = pathlib.Path(location)
  if not root.is_dir():
    raise SourceError(f"folder {root} does not exist")
  items, skipped, class_names = [], [], set()
  for split, folder in _split_folders(root).items():
    for loose in sorted(p for p in folder.iterdir() if p.is_file() and folder != root
                        and p.suffix.lower() in IMAGE_SUFFIXES):
      skipped.append(Skipped(str(loose), "unlabelled", f"not inside a class folder of {folder}"))
    for class_dir in _subfolders(folder):
      class_names.add(class_dir.name)
      items += [Item(str(path), (class_dir.name,), split, str(class_dir))
                for path in _visible_files(class_dir, skipped)]
  if not class_names:
    raise SourceError(f"{root} has no class sub-folders "
                      f"(expected {root}/CLASS/IMAGE or {root}/train/CLASS/IMAGE)")
  return Listing(items, tuple(sorted(class_names)), skipped, root)


# ----------------------------------------------------------------------- CSV


def _split_labels(text: str) -> tuple[str, ...]:
  return tuple(dict.fromkeys(t.strip() for t in text.split(";") if t.strip()))


def list_csv(location: str) -> Listing:
  path = pathlib.Path(location)
  if not path.is_file():
    raise SourceError(f"CSV file {path} does not exist")
  try:
    with open(path, newline="", encoding="utf-8-sig") as handle:
      reader = csv.DictReader(handle)
      columns = set(reader.fieldnames or ())
      if not {"path", "label"} <= columns:
        raise SourceError(f"{path} must have a header with columns 'path' and 'label' "
                          f"(optional 'split'); it has {sorted(columns)}")
      rows = list(reader)
  except (UnicodeDecodeError, csv.Error) as error:
    raise SourceError(f"{path} is not a UTF-8 CSV file ({error})") from None
  extra = [c for c in reader.fieldnames or () if c not in ("path", "label", "split")]
  if any(not c.strip() for c in extra):
    raise SourceError(f"{path} has a label column without a name in its header")
  items, skipped = [], []
  for number, row in enumerate(rows, start=2):
    where = f"{path} line {number}"
    file = str((path.parent / row["path"].strip()).resolve()) if row["path"] else ""
    labels = _split_labels(row["label"] or "")
    split = (row.get("split") or "").strip().lower() or None
    if split is not None and split not in SPLIT_ALIASES:
      raise SourceError(f"{where}: split {split!r} is not one of train, val, test")
    if not file or not labels:
      skipped.append(Skipped(file or where, "unlabelled", f"{where} has no path or no label"))
      continue
    columns = tuple((c.strip(), (row[c] or "").strip()) for c in extra if (row[c] or "").strip())
    items.append(Item(file, labels, split and SPLIT_ALIASES[split], where, columns))
  names = tuple(sorted({label for item in items for label in item.labels}))
  if not names:
    raise SourceError(f"{path} lists no labelled images")
  return Listing(items, names, skipped)


# --------------------------------------------------------------- Label Studio


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
  except (json.JSONDecodeError, UnicodeDecodeError) as error:
    raise SourceError(f"{path} is not JSON ({error}); export the project as 'JSON'") from None
  if not isinstance(tasks, list):
    raise SourceError(f"{path} must hold a list of tasks (Label Studio's 'JSON' export)")
  root = pathlib.Path(image_root) if image_root else path.parent
  items, skipped = [], []
  for task in tasks:
    data = task.get("data") or {}
    reference = data.get("image") or next((v for v in data.values() if isinstance(v, str)), None)
    if reference is None:
      raise SourceError(f"{path}: task {task.get('id')} has no image in 'data'")
    file = _labelstudio_path(reference, root)
    labels = _choices(task)
    if labels is None:
      skipped.append(Skipped(file, "unlabelled", f"task {task.get('id')} has no "
                             "(non-cancelled) annotation with choices"))
      continue
    items.append(Item(file, labels, None, f"{path} task {task.get('id')}"))
  names = tuple(sorted({label for item in items for label in item.labels}))
  if not names:
    raise SourceError(f"{path} has no annotated tasks")
  return Listing(items, names, skipped)


LISTERS: dict[str, Callable[[str], Listing]] = {
    "folder": list_folder, "csv": list_csv, "labelstudio": list_labelstudio}


def list_source(source: str) -> Listing:
  kind, sep, location = source.partition(":")
  if not sep or kind not in LISTERS:
    raise SourceError(f"--source {source!r} is not one of: "
                      f"{', '.join(k + ':PATH' for k in LISTERS)}")
  return LISTERS[kind](location)
