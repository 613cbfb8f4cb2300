"""Evaluates a trained model directory, or an ensemble of them, on one split.

    python -m experiments.evaluate --workdir=runs/fashion_mnist [--split=test] [--which=best]
    python -m experiments.evaluate --workdir=runs/fashion_mnist --fit_temperature --tta=flip
    python -m experiments.evaluate --workdir=runs/a --workdir=runs/b [--output_dir=DIR]

One workdir (any task: classification, multi-label, multi-task): writes
WORKDIR/eval/<split>/report.json, its plots and report.html (one self-contained
page), logs the same numbers, tables and images to the run's W&B run, and
prints a per-class summary (per head for multi-task). --fit_temperature fits
the softmax temperature on the validation split first and stores it in the
model card (training does this at its end); --tta averages the probabilities
over flipped (and shifted) views.
Several: the ensemble (mean of the members' probabilities) and each member
side by side; the ensemble's report and members.json go to --output_dir
(default FIRST_WORKDIR/eval/ensemble/<split>/).
"""

import pathlib

from absl import flags

from experiments import common
from vision import config as config_lib
from vision import logging as logging_lib
from vision import parallel, tasks
from vision.checkpoint import Checkpoints
from vision.evaluate import ensemble as ensemble_lib
from vision.evaluate import evaluate as evaluate_lib
from vision.evaluate import tta as tta_lib
from vision.evaluate.html_report import HTML_FILENAME

_WORKDIR = flags.DEFINE_multi_string(
    "workdir", None, "A model directory written by experiments.train; repeat for an ensemble.")
_SPLIT = flags.DEFINE_string("split", "test", "The split to evaluate: train, val or test.")
_WHICH = flags.DEFINE_enum("which", "best", ["best", "latest"],
                           "Which checkpoint: best by the validation metric, or the latest.")
_TTA = flags.DEFINE_enum("tta", "none", list(tta_lib.TTA_MODES),
                         "Test-time augmentation: none, flip (2 views) or flip_crops (10 views).")
_FIT_TEMPERATURE = flags.DEFINE_bool(
    "fit_temperature", False,
    "Fit the softmax temperature on the validation split and store it in the model card.")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Ensembles only: where the ensemble's report goes.")
flags.mark_flag_as_required("workdir")


def main(argv: list[str]) -> None:
  common.reject_extra_arguments(argv)
  parallel.initialize_distributed()
  if len(_WORKDIR.value) > 1:
    result = ensemble_lib.evaluate_ensemble(_WORKDIR.value, _SPLIT.value, which=_WHICH.value,
                                            output_dir=_OUTPUT_DIR.value, tta=_TTA.value)
    print(ensemble_lib.format_comparison(result))
    return
  workdir = _WORKDIR.value[0]
  report = evaluate_lib.evaluate_workdir(workdir, _SPLIT.value, which=_WHICH.value,
                                         tta=_TTA.value, fit_temperature=_FIT_TEMPERATURE.value)
  task = tasks.load(workdir)
  if parallel.is_main_process():
    _log_to_wandb(task, report, workdir)
  print(task.summary(report))
  print(f"report: {pathlib.Path(workdir) / evaluate_lib.EVAL_DIR / _SPLIT.value / HTML_FILENAME}")


def _log_to_wandb(task, report: dict, workdir: str) -> None:
  """Adds the report to the training run's W&B run (resumed by its id)."""
  config = config_lib.load_resolved(workdir)
  run = logging_lib.init_wandb(
      config.to_dict(), workdir, project=config.wandb.project,
      entity=config.wandb.entity, name=config.wandb.name, group=config.wandb.group,
      mode=config.wandb.mode)
  writer = logging_lib.WandbWriter(run)
  step = Checkpoints(workdir, read_only=True).latest_step() or 0
  evaluate_lib.publish(writer, task, report, _SPLIT.value, step, workdir)
  writer.close()


if __name__ == "__main__":
  common.run(main)
