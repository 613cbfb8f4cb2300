"""Ensembles of model directories: the mean of their probabilities, scored beside each member.

    result = evaluate_ensemble(["runs/a", "runs/b"], split="test")
    result["ensemble"]["accuracy"], [m["accuracy"] for m in result["members"]]
    print(format_comparison(result))

    members = load_members(["runs/a", "runs/b"])   # (model, card) pairs: a distillation teacher

The members must share classes (names and order; for multi-task models every
head's); each is fed with its own input spec, on the split of the data it was
trained on, and all must see the same examples in the same order. The
ensemble's report (the first member's task's format) and `members.json` (one
row per member and one for the ensemble: the task's scalars) go to
`output_dir`, by default `FIRST_WORKDIR/eval/ensemble/<split>/`.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Sequence

from flax import nnx
import jax
import numpy as np

from vision import parallel, tasks
from vision.checkpoint import ModelCard, load_model
from vision.config import ConfigError
from vision.evaluate.evaluate import EVAL_DIR, predict_workdir
from vision.files import write_text_atomically

MEMBERS_FILE = "members.json"
# Column order of the comparison; a task's other scalars follow.
_COLUMNS = ("accuracy", "top5_accuracy", "loss", "macro_f1")


def check_compatible(cards: Sequence[ModelCard], workdirs: Sequence[str | os.PathLike]) -> None:
  """Raises ConfigError unless every member predicts the same classes in the same order."""
  first = cards[0]
  for card, workdir in zip(cards[1:], workdirs[1:]):
    if card.class_names != first.class_names:
      raise ConfigError(
          f"ensemble members disagree on classes: {workdirs[0]} has {list(first.class_names)}, "
          f"{workdir} has {list(card.class_names)}")


def load_members(workdirs: Sequence[str | os.PathLike], *,
                 which: str = "best") -> list[tuple[nnx.Module, ModelCard]]:
  """The models (eval mode) and cards of an ensemble's model directories."""
  members = [load_model(workdir, which=which) for workdir in workdirs]
  check_compatible([card for _, card in members], workdirs)
  return members


def _row(name: str, task, report: dict) -> dict:
  scalars = {key.partition("/")[2]: value for key, value in task.scalars(report, "x").items()}
  return {"name": name, "num_examples": report["num_examples"], **scalars}


def evaluate_ensemble(workdirs: Sequence[str | os.PathLike], split: str = "test", *,
                      which: str = "best", output_dir: str | os.PathLike | None = None,
                      tta: str = "none") -> dict:
  """Scores each member and the mean of their probabilities on `split`.

  Returns {"split", "workdirs", "members": [row, ...], "ensemble": row, "report": report}
  and writes the ensemble's report plus members.json to `output_dir`.
  """
  if len(workdirs) < 2:
    raise ConfigError("an ensemble needs at least two --workdir values")
  predictions = [predict_workdir(workdir, split, which=which, tta=tta) for workdir in workdirs]
  check_compatible([card for _, _, card in predictions], workdirs)
  labels = predictions[0][0]
  for (other, probs, _), workdir in zip(predictions[1:], workdirs[1:]):
    if len(probs) != len(predictions[0][1]) or not all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(other), jax.tree.leaves(labels))):
      raise ConfigError(
          f"ensemble members saw different '{split}' examples ({workdirs[0]}: "
          f"{len(predictions[0][1])}, {workdir}: {len(probs)}): train them on the same data "
          "source and limits")
  task = tasks.load(workdirs[0])
  mean_probs = np.mean([probs for _, probs, _ in predictions], axis=0)
  members = [_row(str(workdir), task, task.report(labels, probs))
             for workdir, (_, probs, _) in zip(workdirs, predictions)]
  # The members' probabilities are each at its own temperature; the mean has none of its own.
  report = task.uncalibrated().report(labels, mean_probs)
  report["tta"] = tta
  result = {"split": split, "workdirs": [str(w) for w in workdirs], "members": members,
            "ensemble": _row("ensemble", task, report), "report": report}
  output_dir = pathlib.Path(output_dir or pathlib.Path(workdirs[0]) / EVAL_DIR / "ensemble" / split)
  if parallel.is_main_process():
    task.write_report(report, output_dir)
    summary = {k: v for k, v in result.items() if k != "report"}
    write_text_atomically(output_dir / MEMBERS_FILE, json.dumps(summary, indent=2) + "\n")
  result["output_dir"] = str(output_dir)
  return result


def format_comparison(result: dict) -> str:
  """The members and the ensemble side by side, one line each."""
  rows = result["members"] + [result["ensemble"]]
  present = [c for c in rows[0] if c not in ("name", "num_examples")]
  columns = [c for c in _COLUMNS if c in present] + [c for c in present if c not in _COLUMNS]
  columns = [c for c in columns if all(c in row for row in rows)]
  width = max(len(row["name"]) for row in rows)
  lines = [f"{'model':<{width}}  " + "  ".join(f"{c:>13}" for c in columns)]
  for row in rows:
    lines.append(f"{row['name']:<{width}}  " + "  ".join(f"{row[c]:>13.4f}" for c in columns))
  lines.append(f"({result['split']} split, {rows[0]['num_examples']} examples; "
               f"report in {result['output_dir']})")
  return "\n".join(lines)
