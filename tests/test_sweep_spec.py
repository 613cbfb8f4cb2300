"""Sweep definitions: parsing get_sweep() dicts, their errors, and the trial overrides."""

from __future__ import annotations

import re

import pytest

from vision.config import ConfigError
from vision.sweep import SweepSpec, format_override


def spec(**raw) -> SweepSpec:
  return SweepSpec.from_dict(raw, default_name="my_config")


def test_a_grid_runs_every_point_once_and_tuples_survive_the_database():
  grid = spec(method="grid", parameters={"optim.learning_rate": [0.1, 0.01],
                                         "model.widths": [(8, 16), (16, 32)]})
  assert grid.name == "my_config" and grid.num_trials == 4 and grid.metric == "val/accuracy"
  points = grid.grid()
  assert len(points) == 4 and points[0] == {"optim.learning_rate": 0.1, "model.widths": "[8, 16]"}
  assert grid.overrides(points[1]) == ["--config.optim.learning_rate=0.1",
                                       "--config.model.widths=(16, 32)"]


def test_ranges_become_optuna_distributions():
  random = spec(method="random", num_trials=5, goal="minimize", metric="val/loss", parameters={
      "optim.learning_rate": {"log_uniform": (1e-3, 1.0)}, "model.dropout": {"uniform": (0, 0.5)},
      "optim.warmup_epochs": {"int": (0, 3)}, "optim.name": ["sgd", "adamw"]})
  kinds = {p.key: p.distribution() for p in random.params}
  assert kinds["optim.learning_rate"].log and kinds["optim.learning_rate"].high == 1.0
  assert not kinds["model.dropout"].log
  assert type(kinds["optim.warmup_epochs"]).__name__ == "IntDistribution"
  assert kinds["optim.name"].choices == ("sgd", "adamw")
  assert random.num_trials == 5 and random.goal == "minimize"


@pytest.mark.parametrize("raw, message", [
    ({"method": "grid", "parameters": {"optim.lerning_rate": [0.1]}},
     "did you mean 'optim.learning_rate'"),
    ({"method": "grid", "parameters": {"optim.learning_rate": {"uniform": (0, 1)}}},
     "lists of values only"),
    ({"method": "bayes", "parameters": {"seed": [1]}}, "['method'] is 'bayes'"),
    ({"method": "random", "parameters": {"seed": [1, 2]}}, "['num_trials'] must be a positive int"),
    ({"method": "tpe", "num_trials": 3,
      "parameters": {"optim.learning_rate": {"log_uniform": (0, 1)}}}, "log_uniform needs low > 0"),
    ({"method": "tpe", "num_trials": 3, "parameters": {"model.dropout": {"normal": (0, 1)}}},
     "must be a list of choices"),
    ({"method": "grid", "parameters": {}}, "non-empty dict"),
    ({"method": "grid", "trials": 3, "parameters": {"seed": [1]}}, "unknown key"),
])
def test_mistakes_are_one_line_errors(raw, message):
  with pytest.raises(ConfigError, match=re.escape(message)):
    spec(**raw)


def test_overrides_are_what_config_flags_parse():
  assert format_override("optim.learning_rate", 0.05) == "--config.optim.learning_rate=0.05"
  assert format_override("model.widths", (8,)) == "--config.model.widths=(8,)"
  assert format_override("optim.name", "adamw") == "--config.optim.name=adamw"
  assert format_override("data.flip", True) == "--config.data.flip=True"
