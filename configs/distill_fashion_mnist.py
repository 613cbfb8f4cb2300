"""Distils the Fashion-MNIST quickstart CNN (164k parameters) into one of 27k: DRAFT recipe.

(Docstring with the measured table is written once the search and the comparison ran.)
"""

from vision import config as config_lib

# The comparison's budget, the same for both variants (epochs of the 54,000 training images).
EPOCHS = 14.0
# The recipe search's budget per trial (steps of 128).
SEARCH_STEPS = 2000


def _arg(arg):
  return config_lib.parse_arg(arg, teacher="runs/fashion_mnist", alone=False, temperature=1.0,
                              compare=False, search="", smoke=False)


def get_config(arg: str | None = None):
  arg = _arg(arg)
  config = config_lib.defaults()
  config_lib.use_fashion_mnist(config)
  # The teacher's input spec (configs/fashion_mnist.py): teacher and student share each batch.
  config.data.mean = (0.286,)
  config.data.std = (0.353,)
  config.data.flip = True

  config.model.name = "small_cnn"
  config.model.widths = (8, 16)
  config.model.hidden = 32

  config.train.batch_size = 128
  config.train.epochs = EPOCHS
  config.train.log_every_steps = 100

  config.optim.name = "sgd"
  config.optim.learning_rate = 0.1
  config.optim.weight_decay = 5e-4
  config.optim.schedule = "cosine"
  config.optim.warmup_epochs = 0.5

  config.distill.teachers = tuple(filter(None, arg.teacher.split("+")))
  config.distill.temperature = arg.temperature
  config.distill.hard_label_weight = 0.0
  config.distill.variant = "alone" if arg.alone else "distilled"

  if arg.search:
    config.train.num_steps = SEARCH_STEPS
  if arg.smoke:
    config.data.max_train_examples = 1024
    config.data.max_eval_examples = 512
    config.train.epochs = 2.0
    config.train.num_steps = None
    config.train.log_every_steps = 4
    config.train.eval_every_steps = 4  # a few points on each curve
  return config


def _search(variant: str) -> dict:
  if variant == "alone":
    return {"distill.variant": ["alone"], "train.label_smoothing": [0.0, 0.1],
            "data.mixup_alpha": [0.0, 0.2, 1.0]}
  if variant == "distilled":
    return {"distill.temperature": [1.0, 2.0, 4.0], "distill.hard_label_weight": [0.0, 0.5],
            "data.mixup_alpha": [0.0, 1.0]}
  raise config_lib.ConfigError(
      f"config argument 'search={variant}': expected search=alone or search=distilled")


def get_sweep(arg: str | None = None):
  arg = _arg(arg)
  suffix = "_smoke" if arg.smoke else ""
  if arg.search:
    return {"name": f"distill_fashion_mnist_search_{arg.search}{suffix}", "method": "grid",
            "metric": "val/accuracy", "parameters": _search(arg.search)}
  return {"name": f"distill_fashion_mnist_compare{suffix}", "method": "grid",
          "metric": "test/accuracy", "baseline": {"distill.variant": "alone"},
          "parameters": {"distill.variant": ["alone", "distilled"], "seed": [0, 1, 2]}}
