"""Config validation: every user mistake is one actionable line, before anything compiles."""

from __future__ import annotations

import re

import ml_collections
import pytest

from conftest import run_module
from vision import config as config_lib


def _config(**overrides):
  """A config as a user's file may build it: only the keys it sets, any types."""
  groups: dict = {}
  for key, value in overrides.items():
    group, name = key.split(".")
    groups.setdefault(group, {})[name] = value
  return ml_collections.ConfigDict(groups)


def test_defaults_validate():
  config = _config(**{"data.source": "tfds:mnist"})
  assert config_lib.validate(config).train.batch_size == 128


def test_unknown_key_suggests_the_right_one():
  config = _config(**{"data.source": "tfds:mnist", "optim.lerning_rate": 0.1})
  with pytest.raises(config_lib.ConfigError,
                     match=r"'optim.lerning_rate' is unknown; did you mean 'optim.learning_rate'"):
    config_lib.validate(config)


@pytest.mark.parametrize("key, value, message", [
    ("train.batch_size", "64", r"'train.batch_size' must be int, got str"),
    ("data.flip", 1, r"'data.flip' must be true or false"),
    ("optim.name", "adam", r"'optim.name' is 'adam'; expected one of sgd, adamw"),
    ("train.label_smoothing", 1.5, r"'train.label_smoothing' must be in \[0, 1\)"),
    ("model.name", "resnet19", r"'model.name' is 'resnet19'; known models: .*resnet18"),
    ("data.source", "idx:/no/such/dir", r"'data.source': directory '/no/such/dir' does not exist"),
    ("data.source", "s3:bucket", r"expected 'idx:PATH', 'folder:PATH', 'csv:FILE', 'labelstudio:FILE', 'tfds:NAME' or 'prepared:DIR'"),
])
def test_bad_values_name_the_key(key, value, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(_config(**{"data.source": "tfds:mnist", key: value}))


def test_ints_are_accepted_for_floats():
  config = config_lib.validate(_config(**{"data.source": "tfds:mnist", "optim.learning_rate": 1}))
  assert config.optim.learning_rate == 1.0 and isinstance(config.optim.learning_rate, float)


def test_parse_arg():
  arg = config_lib.parse_arg("smoke,steps=7", smoke=False, steps=12, source="")
  assert arg.smoke is True and arg.steps == 7 and arg.source == ""
  with pytest.raises(config_lib.ConfigError, match="config argument 'fast' is unknown"):
    config_lib.parse_arg("fast", smoke=False)
  with pytest.raises(config_lib.ConfigError, match="'steps=x' is not a int"):
    config_lib.parse_arg("steps=x", steps=1)


def _assert_one_line_error(result, pattern: str) -> None:
  assert result.returncode != 0
  lines = [l for l in result.stderr.splitlines()
           if l.strip() and "absl::InitializeLog" not in l and "oneDNN" not in l]
  assert len(lines) == 1, result.stderr
  assert "Traceback" not in result.stderr
  assert re.search(pattern, lines[0]), lines[0]


@pytest.mark.slow
def test_cli_errors_are_one_line(tmp_path, idx_dir):
  base = ("experiments.train", "--config=configs/fashion_mnist.py:smoke",
          f"--workdir={tmp_path / 'run'}")
  cases = [
      (("--config.optim.lerning_rate=0.1",), r"lerning_rate"),
      (("--config.train.batch_size=abc",), r"train.batch_size"),
      (("--config.data.source=idx:/missing/fmnist",), r"'/missing/fmnist' does not exist"),
      (("--config.model.name=resnet19",), r"'model.name' is 'resnet19'"),
  ]
  for extra, pattern in cases:
    _assert_one_line_error(run_module(*base, *extra, check=False, timeout=120), pattern)
  assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_batch_size_not_divisible_by_devices(tmp_path, idx_dir):
  result = run_module("experiments.train", "--config=configs/fashion_mnist.py:smoke",
                      f"--workdir={tmp_path / 'run'}", "--config.train.batch_size=100",
                      f"--config.data.source=idx:{idx_dir}", devices=8, check=False, timeout=120)
  _assert_one_line_error(result, r"'train.batch_size'=100 is not divisible by the 8 devices")


def test_fashion_mnist_configs_fall_back_to_tfds_without_the_debian_copy(monkeypatch, tmp_path,
                                                                         capsys):
  config = config_lib.defaults()
  monkeypatch.setattr(config_lib, "DEBIAN_FASHION_MNIST", str(tmp_path))
  config_lib.use_fashion_mnist(config)
  assert config.data.source == f"idx:{tmp_path}"
  assert tuple(config.data.class_names) == config_lib.FASHION_MNIST_CLASSES
  config = config_lib.defaults()
  monkeypatch.setattr(config_lib, "DEBIAN_FASHION_MNIST", str(tmp_path / "missing"))
  config_lib.use_fashion_mnist(config)
  assert config.data.source == "tfds:fashion_mnist"
  assert "dataset-fashion-mnist" in capsys.readouterr().err
