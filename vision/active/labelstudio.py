"""Queries for annotators as Label Studio tasks, and the annotators' export read back.

    tasks = query_tasks(relative_paths, probs, class_names, acquisition, model_version="round-0")
    write_queries("runs/al/queries/round-0", tasks, rows, class_names)
    labels, problems = read_export("export.json", pool_root="unlabelled/")   # {path: class}

Tasks use Label Studio's JSON import format with pre-annotations
(https://labelstud.io/guide/predictions): per image, `data` (the image as a
local-files URL, `/data/local-files/?d=RELATIVE/PATH`, served when Label Studio
runs with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and
LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=the pool folder; plus its `path`,
`priority` 1..M and acquisition score) and `predictions`: the model's top-k
classes, one prediction each, `{"model_version", "score", "result": [{"from_name":
"choice", "to_name": "image", "type": "choices", "value": {"choices": [CLASS]}}]}`.
`label_config.xml` beside the tasks is the matching labelling interface
(`<Image name="image">` + `<Choices name="choice">`). Tasks are written in
priority order (most informative first).

The export (Label Studio's "JSON" export) is read by the project's one Label
Studio reader, `vision.data.listing.list_labelstudio`.
"""

from __future__ import annotations

import csv
import json
import pathlib
from typing import Sequence
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import numpy as np

from vision.data.errors import SourceError
from vision.data.listing import list_labelstudio
from vision.files import write_atomically, write_text_atomically

TASKS, QUERIES_CSV, LABEL_CONFIG = "labelstudio_tasks.json", "queries.csv", "label_config.xml"
FROM_NAME, TO_NAME = "choice", "image"
LOCAL_FILES = "/data/local-files/?d="


def image_url(relative_path: str) -> str:
  """Label Studio's local-files URL for a path relative to the document root (the pool)."""
  return LOCAL_FILES + quote(relative_path)


def _choice(label: str) -> dict:
  return {"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices",
          "value": {"choices": [label]}}


def query_tasks(relative_paths: Sequence[str], probs: np.ndarray, class_names: Sequence[str],
                acquisition: np.ndarray, *, model_version: str, top_k: int = 3) -> list[dict]:
  """One import task per chosen image, in the given (priority) order.

  probs: float [M, C] of the chosen images; acquisition: float [M].
  """
  tasks = []
  for rank, (path, row, score) in enumerate(zip(relative_paths, probs, acquisition), start=1):
    order = np.argsort(-row, kind="stable")[:min(top_k, len(class_names))]
    tasks.append({
        "data": {"image": image_url(path), "path": path, "priority": rank,
                 "acquisition": float(score)},
        "predictions": [{"model_version": f"{model_version} top-{i + 1}",
                         "score": float(row[c]), "result": [_choice(class_names[c])]}
                        for i, c in enumerate(order)],
    })
  return tasks


def label_config(class_names: Sequence[str]) -> str:
  """The labelling interface the tasks' predictions refer to (single choice)."""
  choices = "\n".join(f"    <Choice value={quoteattr(name)}/>" for name in class_names)
  return (f'<View>\n  <Image name="{TO_NAME}" value="$image"/>\n'
          f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" showInline="true">\n'
          f"{choices}\n  </Choices>\n</View>\n")


def write_queries(directory: str | pathlib.Path, tasks: list[dict],
                  class_names: Sequence[str]) -> None:
  """labelstudio_tasks.json, queries.csv (priority, path, acquisition, top-k) and label_config.xml."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  write_text_atomically(directory / LABEL_CONFIG, label_config(class_names))
  rows = [["priority", "path", "acquisition", "predicted", "probability", "top_k"]]
  for task in tasks:
    top = [(p["result"][0]["value"]["choices"][0], p["score"]) for p in task["predictions"]]
    rows.append([task["data"]["priority"], task["data"]["path"],
                 f"{task['data']['acquisition']:.6g}", top[0][0], f"{top[0][1]:.4f}",
                 ";".join(f"{label}:{prob:.4f}" for label, prob in top)])

  def write_csv(tmp: pathlib.Path) -> None:
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
      csv.writer(handle).writerows(rows)
  write_atomically(directory / QUERIES_CSV, write_csv)
  # The tasks file last: its presence means the round's queries are complete.
  write_text_atomically(directory / TASKS, json.dumps(tasks, indent=2) + "\n")


def read_export(export: str | pathlib.Path, pool_root: str | pathlib.Path,
                class_names: Sequence[str]) -> tuple[dict[str, str], list[str]]:
  """({pool-relative path: class name}, problems) from a Label Studio JSON export.

  Tasks without a (non-cancelled) choice, images outside the pool and choices
  that are not one class of the model are listed in `problems`, not fatal. A
  class name the model does not know is an error for that task only.
  """
  root = pathlib.Path(pool_root).resolve()
  try:
    listing = list_labelstudio(str(export), image_root=str(root))
  except SourceError as error:
    if "has no annotated tasks" in str(error):
      return {}, [str(error)]
    raise
  known = set(class_names)
  labels, problems = {}, [f"{s.path}: {s.reason}" for s in listing.skipped]
  for item in listing.items:
    path = pathlib.Path(item.path)
    try:
      relative = path.resolve().relative_to(root).as_posix()
    except ValueError:
      problems.append(f"{item.path}: not in the pool folder {root}; ignored")
      continue
    if len(item.labels) != 1:
      problems.append(f"{relative}: {len(item.labels)} choices {list(item.labels)}; expected one")
      continue
    if item.labels[0] not in known:
      problems.append(f"{relative}: label {item.labels[0]!r} is not one of the model's classes "
                      f"({', '.join(class_names)}); ignored")
      continue
    labels[relative] = item.labels[0]
  return labels, problems
