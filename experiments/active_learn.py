"""Active learning: choose which images to label next.

Simulation on a labelled config (labels hidden until queried; resumes):

    python -m experiments.active_learn --config=configs/active_fashion_mnist.py \
        --workdir=runs/al --simulate --strategy=margin,random [--initial_labels=500 \
        --query_size=500 --rounds=6 --seeds=3 --warm_start]

writes WORKDIR/curve.json, curve.png and curve.md (the table).

Real use on a folder of unlabelled images, with a trained model:

    python -m experiments.active_learn --config=configs/NAME.py --workdir=runs/al \
        --strategy=margin --pool=folder:unlabelled/ --init_from=runs/model --query_size=100
    # annotate WORKDIR/queries/round-0/labelstudio_tasks.json in Label Studio, export JSON, then:
    python -m experiments.active_learn ... --labels=labelstudio:export.json

Each call trains on every label collected so far (when there are new ones) and
writes the next WORKDIR/queries/round-K/ (labelstudio_tasks.json, queries.csv).
"""

import pathlib

from absl import flags
from ml_collections import config_flags

from experiments import common
from vision import parallel
from vision.active import curve, real, simulate
from vision.config import ConfigError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (NAME.py[:arg]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the rounds, queries and curves.")
_STRATEGY = flags.DEFINE_list(
    "strategy", ["margin"], "random, least_confidence, margin, entropy, bald, coreset or badge; "
    "the simulation takes several, comma-separated.")
_SIMULATE = flags.DEFINE_bool("simulate", False, "Simulate on the config's labelled training split.")
_INITIAL_LABELS = flags.DEFINE_integer("initial_labels", 500, "Simulation: labels before round 1.")
_INITIAL = flags.DEFINE_enum("initial", "stratified", ["stratified", "random"],
                             "Simulation: how the initial labelled set is drawn.")
_QUERY_SIZE = flags.DEFINE_integer("query_size", 500, "Images labelled (queried) per round.")
_ROUNDS = flags.DEFINE_integer("rounds", 6, "Simulation: query rounds after the initial one.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Simulation: repetitions (initial set, init, order).")
_WARM_START = flags.DEFINE_bool(
    "warm_start", False, "Start each round's training from the previous round's parameters "
    "(default: from scratch).")
_MIN_STEPS = flags.DEFINE_integer(
    "min_steps", 0, "Training steps per round: at least this many, else the config's "
    "train.epochs over the labelled set.")
_POOL_SUBSET = flags.DEFINE_integer(
    "pool_subset", None, "Score a seeded random subset of this many unlabelled images per round "
    "(default: all).")
_MC_SAMPLES = flags.DEFINE_integer("mc_samples", 10, "bald: MC-dropout forward passes.")
_FULL_DATA = flags.DEFINE_float(
    "full_data_accuracy", None, "Test accuracy of the same network on every label, drawn on "
    "curve.png and compared in curve.md.")
_POOL = flags.DEFINE_string("pool", None, "Real use: folder:PATH of unlabelled images (any depth).")
_INIT_FROM = flags.DEFINE_string("init_from", None, "Real use: the trained model directory of round 0.")
_LABELS = flags.DEFINE_string(
    "labels", None, "Real use: labelstudio:EXPORT.json, the annotators' answers to merge.")
_TOP_K = flags.DEFINE_integer("top_k", 3, "Real use: the model's top-k classes as pre-annotations.")
flags.mark_flags_as_required(["config", "workdir"])


def _simulate() -> None:
  options = simulate.SimulationOptions(
      strategies=tuple(_STRATEGY.value), seeds=_SEEDS.value,
      initial_labels=_INITIAL_LABELS.value, query_size=_QUERY_SIZE.value, rounds=_ROUNDS.value,
      initial=_INITIAL.value, warm_start=_WARM_START.value, min_steps=_MIN_STEPS.value,
      pool_subset=_POOL_SUBSET.value, mc_samples=_MC_SAMPLES.value)
  simulate.simulate(_CONFIG.value, _WORKDIR.value, options,
                    full_data_accuracy=_FULL_DATA.value)
  print((pathlib.Path(_WORKDIR.value) / curve.CURVE_MD).read_text())
  print(f"curve: {_WORKDIR.value}/curve.json, {_WORKDIR.value}/curve.png")


def _real() -> None:
  if len(_STRATEGY.value) != 1:
    raise ConfigError(f"--strategy: one strategy for real use, got {','.join(_STRATEGY.value)}")
  options = real.RealOptions(
      strategy=_STRATEGY.value[0], pool=_POOL.value, init_from=_INIT_FROM.value,
      query_size=_QUERY_SIZE.value, labels=_LABELS.value, warm_start=_WARM_START.value,
      top_k=_TOP_K.value, mc_samples=_MC_SAMPLES.value)
  summary = real.run_round(_CONFIG.value, _WORKDIR.value, options)
  print(f"round {summary['round']}: {summary['num_queries']} images to label in "
        f"{summary['queries']} (model {summary['model']})")
  if summary.get("unreadable"):
    print(f"{summary['unreadable']} unreadable pool image(s) skipped: see "
          f"{pathlib.Path(summary['queries']).parent / real.UNREADABLE_CSV}")


def main(argv: list[str]) -> None:
  common.reject_extra_arguments(argv)
  parallel.initialize_distributed()
  if _SIMULATE.value:
    _simulate()
  elif _POOL.value and _INIT_FROM.value:
    _real()
  else:
    raise ConfigError("give --simulate, or --pool=folder:PATH with --init_from=MODEL_DIR")


if __name__ == "__main__":
  common.run(main)
