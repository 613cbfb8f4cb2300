"""K-fold cross-validation with out-of-fold predictions and cleanlab label issues.

    python -m experiments.cross_validate --config=configs/fashion_mnist.py:smoke \
        --folds=5 --workdir=runs/cv

Writes WORKDIR/cv_report.json (mean ± 95% CI per metric), WORKDIR/oof_probs.npz and
WORKDIR/label_issues.csv (path, given_label, suggested_label, score; most likely first).
Re-running resumes the folds already trained.
"""

from absl import flags
from ml_collections import config_flags

from experiments import common
from vision.train import cross_validate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (NAME.py[:arg]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the folds and the reports.")
_FOLDS = flags.DEFINE_integer("folds", 5, "Number of stratified folds (K >= 2).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  common.reject_extra_arguments(argv)
  summary = cross_validate.cross_validate(_CONFIG.value, _WORKDIR.value, _FOLDS.value)
  print(cross_validate.format_summary(summary))
  print(f"label issues: {_WORKDIR.value}/{cross_validate.ISSUES}")


if __name__ == "__main__":
  common.run(main)
