"""A library's exception on user input reaches the user as one line naming the flag, key or file.

Each case is a place where a dependency (Optuna/SQLAlchemy, TFDS, torch,
safetensors, JAX's multi-host set-up, W&B, JSON) used to raise its own multi-line error.
The entry points print these errors as `error: ...` and exit 2 (experiments/common.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import tiny_config
from vision import config as config_lib
from vision import parallel
from vision import sweep as sweep_lib
from vision.config import ConfigError
from vision.data.sources import SourceError, open_dataset
from vision.models.torch_import import WeightImportError
from vision.pretrained import read_state_dict


def one_line(error: pytest.ExceptionInfo) -> str:
  message = str(error.value)
  assert "\n" not in message and "Traceback" not in message, message
  return message


@pytest.mark.parametrize("url, expected", [
    ("foo", "--storage foo: 'Could not parse SQLAlchemy URL"),
    ("postgres://me@127.0.0.1:1/db", "Can't load plugin: sqlalchemy.dialects:postgres"),
    ("postgresql://me@127.0.0.1:1/db", "Connection refused"),
    ("redis://localhost", "RedisStorage is removed"),
])
def test_sweep_storage_urls(tmp_path, url, expected):
  spec = sweep_lib.load_sweep("tests/configs/tiny_sweep.py")
  with pytest.raises(ConfigError) as error:
    sweep_lib.Sweep(spec, train_command=["true"], config="unused", workdir=tmp_path / "sweep",
                    storage=url)
  assert expected in one_line(error)
  assert "postgresql://USER@HOST/DATABASE" in str(error.value)
  assert not (tmp_path / "sweep").exists()  # validated before anything was written


def test_unknown_tfds_dataset():
  with pytest.raises(SourceError) as error:
    open_dataset("tfds:no_such_dataset_anywhere")
  assert one_line(error).startswith("data source 'tfds:no_such_dataset_anywhere': ")


@pytest.mark.parametrize("name", ["weights.pth", "weights.safetensors"])
def test_weight_files_that_are_not_state_dicts(tmp_path, name):
  path = tmp_path / name
  path.write_bytes(b"this is not a checkpoint\n" * 4)
  with pytest.raises(WeightImportError) as error:
    read_state_dict(path)
  assert one_line(error).startswith(f"{path} is not a ")


def test_multi_host_environment_variables(monkeypatch):
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
  monkeypatch.setenv("JAX_PROCESS_ID", "0")
  with pytest.raises(ConfigError) as error:
    parallel.initialize_distributed()
  assert one_line(error).startswith("environment variable JAX_NUM_PROCESSES is 'two'")
  monkeypatch.delenv("JAX_PROCESS_ID")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  with pytest.raises(ConfigError, match="JAX_PROCESS_ID is None"):
    parallel.initialize_distributed()


def test_wandb_mode_is_checked_with_the_config_before_a_run_writes(monkeypatch, idx_dir):
  config = tiny_config(f"idx:{idx_dir}")
  config.wandb.mode = "loud"
  with pytest.raises(ConfigError) as error:
    config_lib.validate(config, check_environment=False)
  assert one_line(error).startswith("config key 'wandb.mode' is 'loud'; expected one of online")
  config.wandb.mode = None
  monkeypatch.setenv("WANDB_MODE", "sometimes")
  with pytest.raises(ConfigError, match="environment variable WANDB_MODE is 'sometimes'"):
    config_lib.validate(config)
  monkeypatch.setenv("WANDB_MODE", "dryrun")  # W&B's legacy spelling still works
  config_lib.validate(config)


def test_a_damaged_resolved_config(tmp_path):
  (tmp_path / config_lib.RESOLVED_CONFIG).write_text('{"train": ')
  with pytest.raises(ConfigError) as error:
    config_lib.load_resolved(tmp_path)
  assert one_line(error).startswith(f"{tmp_path / config_lib.RESOLVED_CONFIG} is not valid JSON")
