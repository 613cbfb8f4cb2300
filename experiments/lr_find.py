"""The learning-rate range test for an experiment config: a loss-vs-LR plot and a suggested LR.

    python -m experiments.lr_find --config=configs/fashion_mnist.py [--workdir=runs/lr_find] \
        [--min_lr=1e-5] [--max_lr=10] [--num_steps=100] [--config.train.batch_size=64]

Trains the config's model from scratch with the LR growing exponentially from
--min_lr to --max_lr over --num_steps steps (stopping once the loss blows up),
then writes WORKDIR/lr_find.png and WORKDIR/lr_find.json (`suggested_lr`,
`min_loss_lr`, `steepest_lr`, `conclusive`, `note` and the curve) and prints the
suggestion — or, when the curve shows no minimum (the loss lowest at the first
LR, too few steps), "no suggestion: the test was inconclusive: WHY" (exit 0).
"""

import pathlib

from absl import flags
from ml_collections import config_flags

from experiments import common
from vision import parallel
from vision.train import lr_find

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (NAME.py[:arg]).")
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Where lr_find.png/json go (default runs/lr_find/<config name>).")
_MIN_LR = flags.DEFINE_float("min_lr", 1e-5, "Learning rate of the first step.")
_MAX_LR = flags.DEFINE_float("max_lr", 10.0, "Learning rate after --num_steps steps.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 100, "Steps of the test (at most).")
flags.mark_flag_as_required("config")


def main(argv: list[str]) -> None:
  common.reject_extra_arguments(argv)
  parallel.initialize_distributed()
  result = lr_find.find_lr(_CONFIG.value, min_lr=_MIN_LR.value, max_lr=_MAX_LR.value,
                           num_steps=_NUM_STEPS.value)
  config_name = pathlib.Path(flags.FLAGS["config"].config_filename.split(":")[0]).stem
  workdir = _WORKDIR.value or f"runs/lr_find/{config_name}"
  if parallel.is_main_process():
    paths = result.write(workdir)
    print(result.summary())
    print(f"plot {paths['plot']}, values {paths['json']}")


if __name__ == "__main__":
  common.run(main)
