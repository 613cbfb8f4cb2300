"""Simulated active learning on a labelled dataset: the labels stay hidden until queried.

    options = SimulationOptions(strategies=("margin", "random"), seeds=3, initial_labels=500,
                                query_size=500, rounds=6)
    rows = simulate(config, "runs/al", options)       # resumes; also writes curve.json / .png
    rows[-1]  # {'strategy': 'random', 'seed': 2, 'round': 6, 'num_labels': 3500,
              #  'test_accuracy': ..., 'macro_f1': ..., ...}

For each seed, an initial set (stratified, or random) of the training split is
"labelled" and a model trained on it (round 0, shared by every strategy of that
seed: the same data and seed train the same model). Each round then scores the
rest of the training split with the last model, adds the strategy's `query_size`
choices to the labelled set and trains the next model, from scratch or (warm
start) from the last model's parameters, with `vision.train.loop.train` on a
Dataset whose training split is the labelled subset. Every round is an ordinary
model directory with its own W&B run (group: the strategy).

Layout of the workdir (each file written atomically, so a `kill -9` anywhere
loses at most the round in progress, which resumes from its last checkpoint):

    initial/seed-S/                round 0 of seed S: labelled.npy, result.json, the model
    STRATEGY[-warm]/seed-S/round-K/  labelled.npy (training-split indices, in labelling
                                   order), selection.json (the query that led here),
                                   result.json, the model directory
    curve.json, curve.png, curve.md  every finished round; accuracy vs labels; the table
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import math
import os
import pathlib
import time

import ml_collections
import numpy as np
import sklearn.model_selection

from vision import config as config_lib
from vision.checkpoint import load_model
from vision.config import ConfigError
from vision.data import open_from_config
from vision.data.pipeline import limit_examples
from vision.data.sources import Dataset, RecordSource, SubsetSource, record_labels
from vision.files import write_atomically, write_text_atomically
from vision.active import curve, scoring, strategies
from vision.train import loop

log = logging.getLogger("vision")

LABELLED, RESULT, SELECTION = "labelled.npy", "result.json", "selection.json"


@dataclasses.dataclass(frozen=True)
class SimulationOptions:
  """What to simulate; the command's flags."""
  strategies: tuple[str, ...]
  seeds: int = 3
  initial_labels: int = 500
  query_size: int = 500
  rounds: int = 6
  # 'stratified' (equal class shares, as far as the counts allow) or 'random'.
  initial: str = "stratified"
  # Each round starts from the previous round's parameters instead of a fresh init.
  warm_start: bool = False
  # Training steps per round: the config's train.num_steps if set, else
  # max(min_steps, train.epochs over the labelled set).
  min_steps: int = 0
  # Score a seeded random subset of this many unlabelled images per round (None: all).
  pool_subset: int | None = None
  # BALD's MC-dropout forward passes.
  mc_samples: int = 10
  # The validation split is cut to this many images (it only picks the checkpoint).
  val_examples: int | None = 1000


def run_name(strategy: str, warm_start: bool) -> str:
  return f"{strategy}-warm" if warm_start else strategy


def initial_indices(labels: np.ndarray, count: int, seed: int, mode: str) -> np.ndarray:
  """`count` indices of the training split to label first, sorted; stratified or random."""
  if count >= len(labels):
    raise ConfigError(f"--initial_labels={count} leaves no pool: the training split has "
                      f"{len(labels)} images")
  if mode == "random":
    return np.sort(np.random.default_rng(seed).choice(len(labels), count, replace=False))
  if mode != "stratified":
    raise ConfigError(f"--initial={mode!r} must be 'stratified' or 'random'")
  _, counts = np.unique(labels, return_counts=True)
  stratify = labels if counts.min() >= 2 and count >= len(counts) else None
  chosen, _ = sklearn.model_selection.train_test_split(
      np.arange(len(labels)), train_size=count, stratify=stratify, random_state=seed)
  return np.sort(chosen)


def round_config(config: ml_collections.ConfigDict, *, num_labels: int, seed: int, group: str,
                 name: str, min_steps: int, init_from: str | None) -> ml_collections.ConfigDict:
  """The training config of one round: steps for this labelled-set size, W&B group and name."""
  config = config_lib.validate(config)
  steps = config.train.num_steps or max(
      min_steps, math.ceil(config.train.epochs * num_labels / config.train.batch_size))
  config.train.num_steps = steps
  config.train.eval_every_steps = steps  # one validation pass: it only picks the checkpoint
  config.seed = config.seed + seed
  config.wandb.group = config.wandb.group or group
  config.wandb.name = name
  if init_from:
    config.model.init_from = init_from
  return config


@dataclasses.dataclass
class Simulation:
  """The data of one simulation and where its rounds live."""
  config: ml_collections.ConfigDict
  workdir: pathlib.Path
  options: SimulationOptions
  dataset: Dataset
  train: RecordSource
  labels: np.ndarray
  val: RecordSource

  @classmethod
  def open(cls, config, workdir, options: SimulationOptions) -> "Simulation":
    config = config_lib.validate(config)
    dataset, _ = open_from_config(config.data)
    if dataset.multi_label:
      raise ConfigError("active learning simulates single-label classification; this dataset "
                        "is multi-label")
    train = limit_examples(dataset.split(config.data.train_split), config.data.max_train_examples)
    val = limit_examples(dataset.split(config.data.val_split), options.val_examples)
    return cls(config, pathlib.Path(workdir), options, dataset, train, record_labels(train), val)

  def round_dir(self, name: str, seed: int, round_: int) -> pathlib.Path:
    if round_ == 0:
      return self.workdir / "initial" / f"seed-{seed}"
    return self.workdir / name / f"seed-{seed}" / f"round-{round_}"

  def round_dataset(self, labelled: np.ndarray) -> Dataset:
    splits = dict(self.dataset.splits)
    splits[self.config.data.train_split] = SubsetSource(self.train, np.sort(labelled))
    splits[self.config.data.val_split] = self.val
    return dataclasses.replace(self.dataset, splits=splits)


def _save_indices(path: pathlib.Path, indices: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)

  def write(tmp: pathlib.Path) -> None:
    with open(tmp, "wb") as handle:
      np.save(handle, np.asarray(indices, np.int64))
  write_atomically(path, write)


def _write_json(path: pathlib.Path, value) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  write_text_atomically(path, json.dumps(value, indent=2) + "\n")


def train_round(sim: Simulation, name: str, seed: int, round_: int, group: str) -> dict:
  """Trains (or resumes, or reads back) one round; returns its result.json.

  An exclusive lock on the round directory lets several simulations share a
  workdir (one process per strategy): round 0 is trained once, the others wait for it.
  """
  directory = sim.round_dir(name, seed, round_)
  directory.mkdir(parents=True, exist_ok=True)
  with open(directory / ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if (directory / RESULT).exists():
      return json.loads((directory / RESULT).read_text())
    return _train_round(sim, name, directory, seed, round_, group)


def _train_round(sim: Simulation, name: str, directory: pathlib.Path, seed: int, round_: int,
                 group: str) -> dict:
  labelled = np.load(directory / LABELLED)
  init_from = None
  if sim.options.warm_start and round_ > 0:
    init_from = str(sim.round_dir(name, seed, round_ - 1))
  config = round_config(sim.config, num_labels=len(labelled), seed=seed, group=group,
                        name=f"{group}-seed{seed}-round{round_}", min_steps=sim.options.min_steps,
                        init_from=init_from)
  log.info("%s seed %d round %d: training on %d labels (%d steps)", group, seed, round_,
           len(labelled), config.train.num_steps)
  start = time.time()
  report = loop.train(config, directory, dataset=sim.round_dataset(labelled))
  result = {"num_labels": int(len(labelled)), "test_accuracy": report["accuracy"],
            "macro_f1": report["macro_avg"]["f1"], "train_seconds": round(time.time() - start, 1),
            "train_steps": config.train.num_steps, "load": round(os.getloadavg()[0], 2)}
  _write_json(directory / RESULT, result)
  return result


def query_round(sim: Simulation, name: str, strategy: str, seed: int, round_: int) -> None:
  """Scores the pool with round `round_`'s model and writes round `round_ + 1`'s labelled set."""
  target = sim.round_dir(name, seed, round_ + 1)
  if (target / LABELLED).exists():
    return
  directory = sim.round_dir(name, seed, round_)
  labelled = np.load(directory / LABELLED)
  pool = np.setdiff1d(np.arange(len(sim.labels)), labelled)
  rng = np.random.default_rng([seed, round_, 7])
  if sim.options.pool_subset and sim.options.pool_subset < len(pool):
    pool = np.sort(rng.choice(pool, sim.options.pool_subset, replace=False))
  start = time.time()
  if strategy == "random":  # needs nothing from the model: no scoring pass
    scores = strategies.PoolScores(probs=np.zeros((len(pool), 1), np.float32))
  else:
    model, card = load_model(directory)
    scores, _ = scoring.score_pool(
        model, card, SubsetSource(sim.train, pool), strategy=strategy,
        labelled=SubsetSource(sim.train, labelled), batch_size=sim.config.train.eval_batch_size,
        mc_samples=sim.options.mc_samples, seed=seed * 1000 + round_)
  scored = time.time()
  chosen, acquisition = strategies.select(strategy, scores, sim.options.query_size,
                                          seed=seed * 1000 + round_)
  picked = pool[chosen]
  _write_json(target / SELECTION, {
      "strategy": strategy, "from_round": round_, "pool_size": int(len(pool)),
      "score_seconds": round(scored - start, 1), "select_seconds": round(time.time() - scored, 1),
      "chosen": picked.tolist(), "acquisition": acquisition.tolist(),
      "chosen_labels": np.bincount(sim.labels[picked], minlength=len(sim.dataset.class_names))
                       .tolist()})
  _save_indices(target / LABELLED, np.concatenate([labelled, picked]))


def _row(sim: Simulation, name: str, strategy: str, seed: int, round_: int, result: dict) -> dict:
  row = {"strategy": name, "base_strategy": strategy, "warm_start": sim.options.warm_start,
         "seed": seed, "round": round_, **result}
  selection = sim.round_dir(name, seed, round_) / SELECTION
  if round_ and selection.exists():
    chosen = json.loads(selection.read_text())
    row["score_seconds"], row["select_seconds"] = chosen["score_seconds"], chosen["select_seconds"]
  return row


def collect_rows(sim: Simulation) -> list[dict]:
  """Every finished round of this workdir's runs (any strategy or warm start), in order."""
  rows = []
  for name_dir in sorted(p for p in sim.workdir.iterdir() if p.is_dir() and p.name != "initial"):
    name = name_dir.name
    strategy = name[:-len("-warm")] if name.endswith("-warm") else name
    if strategy not in strategies.STRATEGIES:
      continue
    options = dataclasses.replace(sim.options, warm_start=name.endswith("-warm"))
    view = dataclasses.replace(sim, options=options)
    for seed_dir in sorted(name_dir.glob("seed-*")):
      seed = int(seed_dir.name.split("-")[1])
      for round_ in range(0, 1 + max([0] + [int(p.name.split("-")[1])
                                             for p in seed_dir.glob("round-*")])):
        result_path = view.round_dir(name, seed, round_) / RESULT
        if result_path.exists():
          rows.append(_row(view, name, strategy, seed, round_,
                           json.loads(result_path.read_text())))
  return rows


def write_curve(sim: Simulation, full_data_accuracy: float | None = None) -> list[dict]:
  rows = collect_rows(sim)
  _write_json(sim.workdir / curve.CURVE_JSON, rows)
  if rows:
    curve.plot(rows, sim.workdir / curve.CURVE_PNG, full_data_accuracy=full_data_accuracy)
    write_text_atomically(sim.workdir / curve.CURVE_MD,
                          curve.table(rows, full_data_accuracy=full_data_accuracy) + "\n")
  return rows


def simulate(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
             options: SimulationOptions, *, full_data_accuracy: float | None = None) -> list[dict]:
  """Runs (or resumes) every seed × strategy; returns the rows of curve.json."""
  for strategy in options.strategies:
    strategies.check_strategy(strategy)
  for key in ("initial_labels", "query_size", "seeds"):
    if getattr(options, key) < 1:
      raise ConfigError(f"--{key} must be at least 1, got {getattr(options, key)}")
  sim = Simulation.open(config, workdir, options)
  needed = options.initial_labels + options.query_size * options.rounds
  if needed > len(sim.labels):
    raise ConfigError(f"--initial_labels + --rounds x --query_size = {needed} is more than the "
                      f"{len(sim.labels)} images of the training split")
  sim.workdir.mkdir(parents=True, exist_ok=True)
  for seed in range(options.seeds):
    first = sim.round_dir("", seed, 0) / LABELLED
    if not first.exists():
      _save_indices(first, initial_indices(sim.labels, options.initial_labels, seed,
                                           options.initial))
    elif len(np.load(first)) != options.initial_labels:
      raise ConfigError(f"{sim.workdir} was started with --initial_labels="
                        f"{len(np.load(first))}, not {options.initial_labels}: use another --workdir")
    train_round(sim, "", seed, 0, group="initial")
    for strategy in options.strategies:
      name = run_name(strategy, options.warm_start)
      for round_ in range(options.rounds):
        query_round(sim, name, strategy, seed, round_)
        train_round(sim, name, seed, round_ + 1, group=name)
        write_curve(sim, full_data_accuracy)
  return write_curve(sim, full_data_accuracy)
