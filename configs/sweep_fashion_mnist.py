"""A sweep over the Fashion-MNIST quickstart's optimiser settings, on a 12k-example subset.

Command:

    python -m experiments.sweep --config=configs/sweep_fashion_mnist.py --workdir=runs/sweep \
        --parallel=2

Base config: configs/fashion_mnist.py trained for 3 epochs on 12,000 training
examples (validation on 2,000), so a trial takes a few minutes on a 2-core CPU.
Sweep: 8 random trials over the learning rate (log-uniform 0.01 to 0.5), the
weight decay (log-uniform 1e-5 to 1e-3) and dropout (0 to 0.3), ranked by the
final `val/accuracy`. Arguments: `method=tpe` uses Optuna's TPE instead of
random search; `trials=N` changes the budget (8); `smoke` makes it 4 tiny trials
(1 epoch of 1,024 examples).

Measured (2026-11-29, shared 2-core CPU under heavy load from other jobs, so
wall times are inflated several-fold): `:smoke,trials=2 --parallel=2` (what
notebooks/sweep_analysis.ipynb runs) finished both trials in about 4 minutes,
val/accuracy 0.40 and 0.42 after one epoch of 1,024 images. The full 8-trial
sweep was not run on this shared machine (estimated 3-4 minutes of CPU per trial).
"""

import pathlib

from vision import config as config_lib


def _base(smoke: bool):
  return config_lib.from_file(pathlib.Path(__file__).with_name("fashion_mnist.py"),
                              "smoke" if smoke else None)


def _arg(arg):
  return config_lib.parse_arg(arg, smoke=False, method="random", trials=0)


def get_config(arg: str | None = None):
  arg = _arg(arg)
  config = _base(arg.smoke)
  config.data.max_train_examples = 1024 if arg.smoke else 12_000
  config.data.max_eval_examples = 512 if arg.smoke else 2_000
  config.train.epochs = 1.0 if arg.smoke else 3.0
  config.train.log_every_steps = 8 if arg.smoke else 50
  return config


def get_sweep(arg: str | None = None):
  arg = _arg(arg)
  return {
      "name": "sweep_fashion_mnist" + ("_smoke" if arg.smoke else ""),
      "method": arg.method,
      "num_trials": arg.trials or (4 if arg.smoke else 8),
      "metric": "val/accuracy",
      "goal": "maximize",
      "parameters": {
          "optim.learning_rate": {"log_uniform": (0.01, 0.5)},
          "optim.weight_decay": {"log_uniform": (1e-5, 1e-3)},
          "model.dropout": {"uniform": (0.0, 0.3)},
      },
  }
