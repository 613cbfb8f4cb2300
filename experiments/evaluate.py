"""Evaluates a trained model directory on one split.

    python -m experiments.evaluate --workdir=runs/fashion_mnist [--split=test] [--which=best]

Writes WORKDIR/eval/<split>/report.json and confusion_matrix.png, logs the
same numbers to the run's W&B run, and prints a per-class summary.
"""

from absl import flags

from experiments import common
from vision import config as config_lib
from vision import logging as logging_lib
from vision import parallel
from vision.checkpoint import Checkpoints
from vision.evaluate import evaluate as evaluate_lib
from vision.evaluate import report as report_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "A model directory written by experiments.train.")
_SPLIT = flags.DEFINE_string("split", "test", "The split to evaluate: train, val or test.")
_WHICH = flags.DEFINE_enum("which", "best", ["best", "latest"],
                           "Which checkpoint: best by the validation metric, or the latest.")
flags.mark_flag_as_required("workdir")


def main(argv: list[str]) -> None:
  common.reject_extra_arguments(argv)
  parallel.initialize_distributed()
  report = evaluate_lib.evaluate_workdir(_WORKDIR.value, _SPLIT.value, which=_WHICH.value)
  if parallel.is_main_process():
    _log_to_wandb(report)
  print(report_lib.format_summary(report))


def _log_to_wandb(report: dict) -> None:
  """Adds the report to the training run's W&B run (resumed by its id)."""
  config = config_lib.load_resolved(_WORKDIR.value)
  run = logging_lib.init_wandb(
      config.to_dict(), _WORKDIR.value, project=config.wandb.project,
      entity=config.wandb.entity, name=config.wandb.name, group=config.wandb.group,
      mode=config.wandb.mode)
  writer = logging_lib.WandbWriter(run)
  step = Checkpoints(_WORKDIR.value, read_only=True).latest_step() or 0
  evaluate_lib.publish(writer, report, _SPLIT.value, step, _WORKDIR.value)
  writer.close()


if __name__ == "__main__":
  common.run(main)
