"""A tiny experiment for tests: a few steps of a small CNN on data the test writes.

    python -m experiments.train --config=tests/configs/tiny.py:source=idx:/tmp/idx,steps=12 \
        --workdir=/tmp/tiny
"""

from vision import config as config_lib


def get_config(arg: str | None = None):
  arg = config_lib.parse_arg(arg, source="", steps=12, smoke=False)
  config = config_lib.defaults()
  config.data.source = arg.source
  config.data.val_fraction = 0.125
  config.model.widths = (8, 16)
  config.train.batch_size = 32
  config.train.eval_batch_size = 64
  config.train.num_steps = arg.steps
  config.train.eval_every_steps = 6
  config.train.log_every_steps = 3
  config.optim.learning_rate = 0.05
  return config
