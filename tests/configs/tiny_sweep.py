"""A tiny grid sweep for tests: five trials of tests/configs/tiny.py, the last one invalid.

    python -m experiments.sweep --config=tests/configs/tiny_sweep.py:source=idx:/tmp/idx \
        --workdir=/tmp/sweep --parallel=2
"""

import importlib.util
import pathlib


def _tiny():
  path = pathlib.Path(__file__).with_name("tiny.py")
  spec = importlib.util.spec_from_file_location("tiny_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg: str | None = None):
  return _tiny().get_config(arg)


def get_sweep(arg: str | None = None):
  del arg
  return {
      "name": "tiny-sweep",
      "method": "grid",
      "metric": "val/accuracy",
      # 1.5 is not a valid label smoothing: that trial fails with a ConfigError.
      "parameters": {"train.label_smoothing": [0.0, 0.05, 0.1, 0.2, 1.5]},
  }
