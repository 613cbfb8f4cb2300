"""Active learning with people: query a folder of unlabelled images, learn from the answers.

    options = RealOptions(strategy="margin", pool="folder:unlabelled/", init_from="runs/model",
                          query_size=100)
    summary = run_round(config, "runs/al", options)                  # queries/round-0/
    summary = run_round(config, "runs/al", dataclasses.replace(options,
                        labels="labelstudio:export.json"))          # trains round 1, queries/round-1/

One call does at most one round: it merges the export given with `labels`
(Label Studio's JSON export of the queried tasks) into the labelled set
(`WORKDIR/labels.json`, pool-relative path → class), trains a new model on the
config's own training data plus every pool image labelled so far (when there
are new labels; `WORKDIR/rounds/round-K/`, from scratch or warm-started from
the last model), scores the pool images not yet labelled with the latest model
and writes `WORKDIR/queries/round-K/` (`labelstudio_tasks.json`, `queries.csv`,
`label_config.xml`). The model of round 0 is `init_from`. Re-running the same
command changes nothing; unreadable pool images are listed in
`WORKDIR/queries/round-K/unreadable.csv` and skipped.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import pathlib

import ml_collections
import numpy as np

from vision import config as config_lib
from vision.checkpoint import ModelCard, load_model
from vision.config import ConfigError
from vision.data import open_from_config
from vision.data.errors import SourceError
from vision.data.sources import Dataset, ImageFileSource
from vision.files import write_atomically, write_text_atomically
from vision.active import labelstudio, scoring, strategies
from vision.active.pool import UNREADABLE, UnlabelledFolder
from vision.train import loop
from vision.train.cross_validate import ConcatSource

log = logging.getLogger("vision")
LABELS_FILE, UNREADABLE_CSV = "labels.json", "unreadable.csv"


@dataclasses.dataclass(frozen=True)
class RealOptions:
  """The command's flags for a round with real annotators."""
  strategy: str
  pool: str
  init_from: str
  query_size: int = 100
  labels: str | None = None  # 'labelstudio:EXPORT.json'
  warm_start: bool = False
  top_k: int = 3
  mc_samples: int = 10
  seed: int = 0


def _read_labels(workdir: pathlib.Path) -> dict:
  path = workdir / LABELS_FILE
  if path.exists():
    return json.loads(path.read_text())
  return {"labels": {}, "trained_rounds": []}


def _model_dirs(workdir: pathlib.Path, options: RealOptions) -> list[str]:
  """Round K's model directory at index K (round 0: init_from)."""
  state = _read_labels(workdir)
  return [options.init_from] + [str(workdir / "rounds" / f"round-{r['round']}")
                                for r in state["trained_rounds"]]


def merge_labels(workdir: pathlib.Path, options: RealOptions, pool: UnlabelledFolder,
                 class_names) -> int:
  """Merges `options.labels` into labels.json; returns how many labels are new or changed."""
  kind, sep, location = (options.labels or "").partition(":")
  if not sep or kind != "labelstudio":
    raise ConfigError(f"--labels={options.labels!r} must be labelstudio:EXPORT.json")
  if not os.path.isfile(location):
    raise SourceError(f"--labels: Label Studio export {location} does not exist")
  answers, problems = labelstudio.read_export(location, pool.root, class_names)
  for problem in problems:
    log.warning("%s: %s", location, problem)
  state = _read_labels(workdir)
  changed = {path: label for path, label in answers.items() if state["labels"].get(path) != label}
  if changed:
    state["labels"].update(changed)
    write_text_atomically(workdir / LABELS_FILE, json.dumps(state, indent=2) + "\n")
  log.info("%s: %d labelled image(s), %d new or changed; %d labelled in all", location,
           len(answers), len(changed), len(state["labels"]))
  return len(changed)


def train_next(config: ml_collections.ConfigDict, workdir: pathlib.Path, options: RealOptions,
               pool: UnlabelledFolder) -> None:
  """Trains the next round's model on the config's data plus every pool label so far."""
  state = _read_labels(workdir)
  round_ = len(state["trained_rounds"]) + 1
  config = config_lib.validate(config)
  dataset, _ = open_from_config(config.data)
  names = list(dataset.class_names)
  paths = sorted(state["labels"])
  unknown = sorted({state["labels"][p] for p in paths} - set(names))
  if unknown:
    raise ConfigError(f"labels {unknown} are not classes of the config's data source "
                      f"{config.data.source} ({', '.join(names)})")
  added = ImageFileSource([str(pool.root / p) for p in paths],
                          np.asarray([names.index(state["labels"][p]) for p in paths], np.int64))
  splits = dict(dataset.splits)
  splits[config.data.train_split] = ConcatSource([dataset.split(config.data.train_split), added])
  if options.warm_start:
    config.model.init_from = _model_dirs(workdir, options)[-1]
  config.wandb.group = config.wandb.group or "active"
  config.wandb.name = config.wandb.name or f"active-round{round_}"
  directory = workdir / "rounds" / f"round-{round_}"
  log.info("round %d: training on %d images (%d from the pool)", round_,
           len(splits[config.data.train_split]), len(paths))
  report = loop.train(config, directory, dataset=dataclasses.replace(dataset, splits=splits))
  state["trained_rounds"].append({"round": round_, "num_pool_labels": len(paths),
                                  "test_accuracy": report.get("accuracy")})
  write_text_atomically(workdir / LABELS_FILE, json.dumps(state, indent=2) + "\n")


def _write_unreadable(path: pathlib.Path, reasons: dict[str, str]) -> None:
  def write(tmp: pathlib.Path) -> None:
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
      csv.writer(handle).writerows([["path", "error"], *sorted(reasons.items())])
  write_atomically(path, write)


def query(workdir: pathlib.Path, options: RealOptions, pool: UnlabelledFolder, round_: int,
          model_dir: str, batch_size: int) -> dict:
  """Scores the unlabelled pool with `model_dir` and writes queries/round-K/."""
  directory = workdir / "queries" / f"round-{round_}"
  labelled = set(_read_labels(workdir)["labels"])
  candidates = np.asarray([i for i, p in enumerate(pool.relative_paths) if p not in labelled],
                          np.int64)
  if not len(candidates):
    raise ConfigError(f"every image of {options.pool} is labelled: nothing left to query")
  model, card = load_model(model_dir)
  subset = _Subset(pool, candidates)
  labelled_records = None
  if strategies.LABELLED_EMBEDDINGS in strategies.NEEDS.get(options.strategy, ()):
    labelled_records = _labelled_records(pool, labelled)
  scores, marks = scoring.score_pool(model, card, subset, strategy=options.strategy,
                                     labelled=labelled_records, batch_size=batch_size,
                                     mc_samples=options.mc_samples, seed=options.seed + round_)
  readable = marks != UNREADABLE
  reasons = pool.unreadable(candidates[~readable])
  for path, reason in reasons.items():
    log.warning("pool image %s is unreadable (%s); skipped", path, reason)
  scores = _rows(scores, readable)
  chosen, acquisition = strategies.select(options.strategy, scores, options.query_size,
                                          seed=options.seed + round_)
  picked = candidates[readable][chosen]
  relative = [pool.relative_paths[i] for i in picked]
  tasks = labelstudio.query_tasks(relative, scores.probs[chosen], card.class_names, acquisition,
                                  model_version=f"round-{round_}", top_k=options.top_k)
  directory.mkdir(parents=True, exist_ok=True)
  _write_unreadable(directory / UNREADABLE_CSV, reasons)
  labelstudio.write_queries(directory, tasks, card.class_names)
  return {"round": round_, "model": model_dir, "queries": str(directory / labelstudio.TASKS),
          "num_queries": len(tasks), "unreadable": len(reasons), "pool_left": int(readable.sum())}


class _Subset:
  """Pool records at `indices` (keeps the pool's per-record error marking)."""

  def __init__(self, pool: UnlabelledFolder, indices: np.ndarray):
    self._pool, self._indices = pool, indices

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, index: int) -> dict:
    return self._pool[int(self._indices[index])]


def _labelled_records(pool: UnlabelledFolder, labelled: set[str]) -> _Subset | None:
  indices = np.asarray([i for i, p in enumerate(pool.relative_paths) if p in labelled], np.int64)
  return _Subset(pool, indices) if len(indices) else None


def _rows(scores: strategies.PoolScores, keep: np.ndarray) -> strategies.PoolScores:
  def take(array):
    return None if array is None else array[keep]
  return dataclasses.replace(scores, probs=scores.probs[keep], embeddings=take(scores.embeddings),
                             mutual_information=take(scores.mutual_information))


def run_round(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
              options: RealOptions) -> dict:
  """Merge the answers, train when they are new, write the next queries; returns a summary."""
  strategies.check_strategy(options.strategy)
  if options.query_size < 1:
    raise ConfigError(f"--query_size must be at least 1, got {options.query_size}")
  if not os.path.isfile(os.path.join(options.init_from, "model_card.json")):
    raise ConfigError(f"--init_from={options.init_from!r} is not a model directory "
                      "(no model_card.json; expected a training workdir)")
  config = config_lib.validate(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  pool = UnlabelledFolder.open(options.pool)
  class_names = ModelCard.read(options.init_from).class_names
  new_labels = merge_labels(workdir, options, pool, class_names) if options.labels else 0
  state = _read_labels(workdir)
  trained_with = state["trained_rounds"][-1]["num_pool_labels"] if state["trained_rounds"] else 0
  if new_labels or len(state["labels"]) > trained_with:
    train_next(config, workdir, options, pool)
  models = _model_dirs(workdir, options)
  round_ = len(models) - 1
  tasks = workdir / "queries" / f"round-{round_}" / labelstudio.TASKS
  if tasks.exists():
    log.info("queries of round %d are already in %s; label them and pass --labels", round_, tasks)
    return {"round": round_, "model": models[-1], "queries": str(tasks),
            "num_queries": len(json.loads(tasks.read_text()))}
  return query(workdir, options, pool, round_, models[-1], config.train.eval_batch_size)
