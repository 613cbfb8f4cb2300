"""Runs (or resumes) the hyperparameter sweep a config file defines with `get_sweep()`.

    python -m experiments.sweep --config=configs/sweep_fashion_mnist.py --workdir=runs/sweep \
        --parallel=2 [--storage=postgresql://user@host/db] [--config.train.epochs=2]

Each trial K is a normal training run in WORKDIR/trial-K (its own process and
W&B run, in the W&B group named after the sweep). WORKDIR/results.csv and
WORKDIR/results.png are rewritten after every trial (and WORKDIR/comparison.json
when the sweep names a `baseline`; its table is printed at the end); the sweep's
state is an Optuna study in WORKDIR/sweep.db (or --storage). Re-running the same command
skips finished trials and restarts interrupted ones.
"""

import sys

from absl import flags
from ml_collections import config_flags

from experiments import common
from vision import comparison
from vision import config as config_lib
from vision import sweep as sweep_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (NAME.py[:arg]) with get_config() and get_sweep().")
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory: trial-K/, results.csv, sweep.db.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Trials run at the same time on this machine.")
_STORAGE = flags.DEFINE_string(
    "storage", None, "SQLAlchemy URL of the Optuna storage (default sqlite:///WORKDIR/sweep.db); "
    "share one (e.g. PostgreSQL) to run drivers of one sweep on many machines.")
flags.mark_flags_as_required(["config", "workdir"])


def _config_argument() -> tuple[str, str, str | None, list[str]]:
  """The --config value (FILE[:arg]), its file and arg, and the --config.KEY=VALUE overrides."""
  value, overrides = None, []
  for arg in sys.argv[1:]:
    if arg.startswith("--config="):
      value = arg.split("=", 1)[1]
    elif arg.startswith("--config."):
      overrides.append(arg)
  config_file, _, config_arg = value.partition(":")
  return value, config_file, config_arg or None, overrides


def main(argv: list[str]) -> None:
  common.reject_extra_arguments(argv)
  # The base config must be sound before any trial starts. Without touching JAX's devices: a
  # driver with JAX's threads running must not fork its trial processes.
  config = config_lib.validate(_CONFIG.value, check_environment=False)
  config_lib.check_source_exists(config.data.source)
  value, config_file, config_arg, overrides = _config_argument()
  spec = sweep_lib.load_sweep(config_file, config_arg)
  sweep = sweep_lib.Sweep(
      spec, train_command=[sys.executable, "-m", "experiments.train"], config=value,
      workdir=_WORKDIR.value, parallel=_PARALLEL.value, storage=_STORAGE.value,
      overrides=overrides)
  rows = sweep.run()
  done = [r for r in rows if r["status"] == "COMPLETE"]
  failed = [r for r in rows if r["status"] == "FAIL"]
  print(f"{spec.name}: {len(done)} complete, {len(failed)} failed of {len(rows)} trials "
        f"({_WORKDIR.value}/results.csv)")
  if done:
    best = (max if spec.goal == "maximize" else min)(done, key=lambda r: r[spec.metric])
    shown = ", ".join(f"{p.key}={best[p.key]}" for p in spec.params)
    print(f"best: trial {best['trial']} {spec.metric}={best[spec.metric]:.4f} ({shown})")
  if spec.baseline:
    print(comparison.format_comparison(sweep.comparison(rows)))


if __name__ == "__main__":
  common.run(main)
