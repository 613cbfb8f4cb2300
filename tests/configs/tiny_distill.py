"""Distillation for tests: tests/configs/tiny.py's student, with a smaller CNN, taught by TEACHERS.

    python -m experiments.train \
        --config=tests/configs/tiny_distill.py:source=idx:/tmp/idx,teachers=/tmp/a+/tmp/b \
        --workdir=/tmp/student
"""

import importlib.util
import pathlib

from vision import config as config_lib


def get_config(arg: str | None = None):
  arg = config_lib.parse_arg(arg, source="", steps=12, teachers="", temperature=2.0)
  path = pathlib.Path(__file__).with_name("tiny.py")
  spec = importlib.util.spec_from_file_location("tiny_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(f"source={arg.source},steps={arg.steps}")
  config.model.widths = (4, 8)
  config.model.hidden = 16
  # '+' separates the members of an ensemble teacher (',' separates config arguments).
  config.distill.teachers = tuple(filter(None, arg.teachers.split("+")))
  config.distill.temperature = arg.temperature
  config.distill.hard_label_weight = 0.25
  return config
