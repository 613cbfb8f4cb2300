"""Tasks: what a model predicts, and how it is trained, scored, served and exported.

    task = tasks.from_config(config, dataset)          # training: sized from the data
    task = tasks.load("runs/fashion_mnist")            # a model directory (card + thresholds.json)
    loss = task.loss(config.train, train_records)      # the train step's objective
    probs = task.probabilities(logits)                 # what evaluation, predict and serving read
    report = task.report(task.targets(batch), probs)   # eval/<split>/report.json

A task is the seam between the generic machinery and the kind of prediction:
the train loop, the pure steps, `experiments.evaluate`, `predict`, `export` and
the server call it and never ask which task they have. Three ship, one module
each, registered in `TASKS` (a plain dict filled by the module defining it):

  * `classification` (vision/tasks/classification.py) — one softmax, today's path;
  * `multi_label` (vision/tasks/multi_label.py) — sigmoids, thresholds tuned on validation;
  * `multi_task` (vision/tasks/multi_task.py) — named heads over one backbone.

`config.task.name` picks one ('auto', the default: `multi_label` for multi-label
data, else `classification`). Every task has the same members:

  building     from_config(config, dataset), from_json(fields, class_names), to_json(),
               class_names, num_outputs (the model head's width), uncertainty_weights
  training     loss(train_config, train_records) -> LossFn, best_metric(...),
               train_metrics(logits, batch), dense_targets(batch) (for mixup/cutmix)
  evaluation   probabilities(logits), targets(host_batch), fit(validation) (tuning on the
               validation split), fitted_state()/with_fitted_state(), calibrate(targets,
               logits) (temperature scaling; kept in to_json, so in the model card),
               uncalibrated() (temperature 1), report(targets, probs, raw_probs),
               sections(report) (name, report, outputs, class names per head),
               write_report(report, dir), plots(dir), scalars(report, split), summary(report)
  prediction   predictions(probs, k) (the JSON of one image), output_names, outputs(logits)
               (one exported output per head), join(outputs), primary (the answer logged)

`logits` and `probabilities` are [B, num_outputs] arrays for every task (a
multi-task model's heads sit side by side); `targets` may be a dict of arrays.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import ml_collections

from vision.checkpoint import ModelCard
from vision.data.sources import Dataset
from vision.files import write_text_atomically

# A task's per-example targets: int labels [N], multi-hot [N, C], or {head: either}.
Targets = Any
# name → the task class (with from_config and from_json); filled by each task's module.
TASKS: dict[str, Any] = {}
# Per-class thresholds (tuned on validation) of a model directory, beside its card.
FITTED_STATE = "thresholds.json"


def from_config(config: ml_collections.ConfigDict, dataset: Dataset):
  """The task `config.task.name` asks for, sized from `dataset` ('auto': multi-label or not)."""
  name = config.task.name
  if name == "auto":
    name = "multi_label" if dataset.multi_label else "classification"
  return TASKS[name].from_config(config, dataset)


def from_json(fields: dict | None, class_names: tuple[str, ...] = ()):
  """The task a model card or export.json describes (no task recorded: classification)."""
  fields = fields or {"name": "classification"}
  return TASKS[fields["name"]].from_json(fields, class_names)


def from_card(card: ModelCard):
  return from_json(card.task, card.class_names)


def load(workdir: str | os.PathLike):
  """The task of a model directory: its card's, with the thresholds tuned on validation if any."""
  task = from_card(ModelCard.read(workdir))
  path = pathlib.Path(workdir) / FITTED_STATE
  return task.with_fitted_state(json.loads(path.read_text())) if path.exists() else task


def save_fitted(task, workdir: str | os.PathLike) -> None:
  """Writes what `task.fit` tuned (per-class thresholds) to WORKDIR/thresholds.json."""
  state = task.fitted_state()
  if state is not None:
    write_text_atomically(pathlib.Path(workdir) / FITTED_STATE, json.dumps(state, indent=2))


def plain_classification(num_classes: int):
  """A plain classification task over classes named '0', '1', ... (tests, benchmarks)."""
  return TASKS["classification"](tuple(str(i) for i in range(num_classes)))


# Importing the tasks fills TASKS.
from vision.tasks import classification, multi_label, multi_task  # noqa: E402,F401  pylint: disable=wrong-import-position
