"""Trains (or resumes) an experiment.

    python -m experiments.train --config=configs/fashion_mnist.py --workdir=runs/fmnist
    python -m experiments.train --config=configs/fashion_mnist.py:smoke --workdir=/tmp/smoke \
        --config.optim.learning_rate=0.05

Re-running the same command continues from the last checkpoint in --workdir.
"""

from absl import flags
from ml_collections import config_flags

from experiments import common
from vision import parallel
from vision.train import trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (NAME.py[:arg]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and reports.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  common.reject_extra_arguments(argv)
  parallel.initialize_distributed()
  report = trainer.train(_CONFIG.value, _WORKDIR.value)
  print(f"test accuracy {report['accuracy']:.4f}  ({_WORKDIR.value}/eval/test/report.json)")


if __name__ == "__main__":
  common.run(main)
