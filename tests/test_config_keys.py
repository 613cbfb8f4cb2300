"""Every documented config option trains: each key of `vision.config.defaults()`, each value.

`RUNS` trains the tiny task for a step or three per run, in-process through `trainer.train`
(the path `experiments.train` takes), with many keys changed per run. The registry test
fails when a key is added to `defaults()` that no run (or named test elsewhere) trains with,
when a documented choice (`config._CHOICES`) or a boolean's other value is never used, and
when a model family has no training test — so no documented option ships untested.
"""

from __future__ import annotations

import json
import pathlib
import re

import numpy as np
import pytest

from conftest import REPO, tiny_config, write_folder_dataset, write_idx_dataset
from vision import config as config_lib
from vision.logging import read_metrics
from vision.models import MODELS
from vision.train import trainer

INIT = "<init_from>"  # replaced by the workdir of the run "sgd-augment-imbalance"
SOURCE_RUN = "sgd-augment-imbalance"

# Every run starts from tests/configs/tiny.py (small CNN (8, 16), 16×16 grey IDX images,
# 4 classes, batch 32) with these, then its own keys.
COMMON = {"train.num_steps": 2, "train.eval_every_steps": 2, "train.log_every_steps": 1,
          "wandb.mode": "disabled"}

RUNS: dict[str, dict] = {
    SOURCE_RUN: {
        "seed": 1, "data.class_names": ("a", "b", "c", "d"), "data.val_split": "holdout",
        "data.val_fraction": 0.2, "data.split_seed": 2,
        "data.crop_padding": 2, "data.flip": True, "data.vflip": True, "data.rotation": 10.0,
        "data.color_jitter": 0.2, "data.randaugment_ops": 2, "data.randaugment_magnitude": 5,
        "data.mixup_alpha": 0.2, "data.cutmix_alpha": 0.3,
        "train.loss": "focal", "train.focal_gamma": 1.0, "train.class_weights": "balanced",
        "train.label_smoothing": 0.1, "train.best_metric": "val/loss",
        "train.keep_checkpoints": 1, "train.checkpoint_every_steps": 1,
        "optim.schedule": "step", "optim.step_boundaries": (0.5,), "optim.step_factor": 0.5,
        "optim.warmup_epochs": 0.1, "optim.momentum": 0.8, "optim.nesterov": False,
        "optim.weight_decay": 1e-4, "optim.learning_rate": 0.05, "optim.grad_clip_norm": 1.0,
        "model.hidden": 32, "model.dropout": 0.1, "model.conv_impl": "lax",
        "wandb.mode": "offline", "wandb.project": "keys", "wandb.name": "source",
        "wandb.group": "coverage",
    },
    "folder-adamw-bf16-balanced": {
        "data.source": "<folder>", "data.image_size": 16, "data.channels": 1,
        "data.mean": (0.4,), "data.std": (0.3,), "data.test_fraction": 0.2,
        "data.sampler": "balanced", "train.class_weights": "balanced",
        "data.random_resized_crop": True, "data.rrc_scale": (0.5, 1.0),
        "data.rrc_ratio": (0.8, 1.25), "data.max_train_examples": 40,
        "data.max_eval_examples": 16,
        "model.name": "mobilenet_v3_small", "model.dtype": "bfloat16", "model.conv_impl": "matmul",
        "optim.name": "adamw", "optim.b1": 0.8, "optim.b2": 0.99, "optim.schedule": "linear",
        "train.imbalance_threshold": 1.0, "train.num_steps": 3, "train.eval_every_steps": 1,
        "train.early_stopping_patience": 1, "train.early_stopping_min_delta": 0.5,
        "train.batch_size": 16, "train.eval_batch_size": 32,
    },
    "resnet-small-stem-epochs": {
        "model.name": "resnet18", "model.stem": "small", "model.num_classes": 6,
        "train.num_steps": None, "train.epochs": 0.1, "optim.schedule": "constant",
        "train.imbalance_threshold": None, "train.batch_size": 16, "quant.mode": "ptq",
        # The splits swapped: the IDX test file trains, the training file tests.
        "data.train_split": "test", "data.test_split": "train",
    },
    "resnet-imagenet-stem": {
        "model.name": "resnet18", "model.stem": "imagenet", "data.image_size": 32,
        "train.num_steps": 1, "train.batch_size": 16, "task.name": "classification",
    },
    "efficientnet-drop-path": {
        "model.name": "efficientnet_lite0", "model.drop_path": 0.1, "data.channels": 3,
        "train.batch_size": 16,
    },
    "gradual-unfreeze": {
        "model.init_from": INIT, "model.hidden": 32, "model.reset_head": True,
        "transfer.mode": "gradual_unfreeze", "transfer.unfreeze_every_epochs": 0.1,
        "transfer.layer_decay": 0.5, "transfer.freeze_batch_norm": True,
    },
    "fine-tune-distill": {
        "model.init_from": INIT, "model.hidden": 32, "transfer.mode": "fine_tune",
        "data.class_names": ("a", "b", "c", "d"),  # a teacher's classes must be the student's
        "transfer.layer_decay": 0.8, "distill.teachers": (INIT,), "distill.temperature": 2.0,
        "distill.hard_label_weight": 0.5,
    },
    "linear-probe": {"model.init_from": INIT, "model.hidden": 32, "transfer.mode": "linear_probe"},
    "channel-prune-qat4": {
        "prune.sparsity": 0.5, "prune.granularity": "channel", "prune.scope": "layer",
        "prune.schedule": "one_shot", "prune.start": 0.0, "prune.end": 0.5, "prune.update_every": 1,
        "prune.exclude": (r"^head\.",), "quant.mode": "qat", "quant.weight_bits": 4,
        "quant.activation_bits": 4,
    },
}

# Keys whose values change where or how a run happens, not what it trains, with the reason.
ENVIRONMENT_ONLY = {
    "data.worker_count": "grain worker processes (how batches are read); "
                         "tests/test_pipeline.py compares worker_count=1 with 0 batch for batch",
    "data.tfds_data_dir": "where TFDS keeps its files; tests fake TFDS with tfds.testing.mock_data",
    "wandb.entity": "a W&B team, used online only (no network here)",
}

# Values trained through the real step by another test: key -> {value: "FILE::TEST"}.
ELSEWHERE = {
    "data.source": {
        "tfds:": "tests/test_train.py::test_tfds_source_trains_through_mock_data_in_bfloat16",
        "prepared:": "tests/test_prepare.py::"
                     "test_prepare_cli_then_fashion_mnist_config_trains_on_prepared",
    },
    "model.name": {name: "tests/test_models.py::test_every_family_trains_under_the_data_mesh"
                   for name in ("mobilenet_v2", "vit_ti16", "convnext_tiny")},
    # The baseline arm of a distillation comparison, trained (with its teacher measuring
    # agreement) by the shipped comparison sweep at smoke size.
    "distill.variant": {
        "alone": "tests/test_distill.py::"
                 "test_compare_sweep_runs_both_variants_over_seeds_at_smoke_size",
    },
    # Tasks need labels the tiny IDX data lacks (multi-hot labels, a second label column).
    "task.name": {
        "multi_label": "tests/test_multilabel.py::test_multilabel_training_from_csv",
        "multi_task": "tests/test_tasks.py::test_multi_task_run_reports_and_logs_every_head",
    },
    "task.weighting": {
        "uncertainty": "tests/test_tasks.py::test_multi_task_run_reports_and_logs_every_head",
    },
}


def _flat(config) -> dict:
  return config_lib._flatten(config.to_dict())  # pylint: disable=protected-access


def _flat_values(run: dict) -> list:
  return [v for value in run.values() for v in (value if isinstance(value, tuple) else (value,))]


def _family(name: str) -> str:
  """A model's family: the module of its builder (sizes of one family share its code)."""
  return MODELS[name].__module__.rsplit(".", 1)[-1]


def _exercised() -> dict[str, list]:
  """Key -> every value some run or other test trains with (defaults count: runs keep them)."""
  values: dict[str, list] = {key: [value] for key, value in _flat(config_lib.defaults()).items()}
  tiny = _flat(tiny_config("idx:/tiny"))
  for run in RUNS.values():
    for key, value in {**tiny, **COMMON, **run}.items():
      values.setdefault(key, []).append(list(value) if isinstance(value, tuple) else value)
  for key, by_value in ELSEWHERE.items():
    values.setdefault(key, []).extend(by_value)
  return values


def test_every_key_and_documented_value_is_trained():
  defaults = _flat(config_lib.defaults())
  exercised = _exercised()
  assert not set(ENVIRONMENT_ONLY) - set(defaults), "ENVIRONMENT_ONLY names unknown keys"
  untested = sorted(key for key in defaults if key not in ENVIRONMENT_ONLY and not any(
      value != defaults[key] for value in exercised[key]))
  assert not untested, (f"config keys no test trains with a non-default value: {untested}; add "
                        "them to a run in RUNS (or, with a reason, to ENVIRONMENT_ONLY)")
  for key, choices in config_lib._CHOICES.items():  # pylint: disable=protected-access
    assert set(choices) <= set(exercised[key]), (key, set(choices) - set(exercised[key]))
  for key, default in defaults.items():
    if isinstance(default, bool):
      assert {True, False} <= set(exercised[key]), key
  sources = {str(value).strip("<>").split(":")[0] for value in exercised["data.source"]}
  assert {"idx", "folder", "tfds", "prepared"} <= sources, sources
  families = {_family(name) for name in exercised["model.name"]}
  # The library's families: tests may register models of their own (unconvertible_models.py).
  library = {_family(name) for name, builder in MODELS.items()
             if builder.__module__.startswith("vision.")}
  assert families == library, "a model family no test trains"
  for by_value in ELSEWHERE.values():
    for reference in by_value.values():
      path, test = reference.split("::")
      assert re.search(rf"^def {test}\(", (REPO / path).read_text(), re.M), reference


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, pathlib.Path]:
  root = tmp_path_factory.mktemp("keys")
  return {"idx": write_idx_dataset(root / "idx"),
          "folder": write_folder_dataset(root / "folder"), "runs": root / "runs"}


def _config(name: str, data: dict[str, pathlib.Path]):
  config = tiny_config(f"idx:{data['idx']}")
  for key, value in {**COMMON, **RUNS[name]}.items():
    if value == "<folder>":
      value = f"folder:{data['folder']}"
    elif value == INIT or value == (INIT,):
      source = str(data["runs"] / SOURCE_RUN)
      value = source if value == INIT else (source,)
    *groups, leaf = key.split(".")
    group = config
    for part in groups:
      group = group[part]
    with group.unlocked():
      group[leaf] = value
  return config


@pytest.fixture(scope="module")
def source_run(data) -> dict:
  """The run the transfer and distillation runs start from (its report)."""
  return trainer.train(_config(SOURCE_RUN, data), data["runs"] / SOURCE_RUN)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_run_trains_with_its_keys(name, data, request):
  workdir = data["runs"] / name
  uses_source = name == SOURCE_RUN or INIT in map(str, _flat_values(RUNS[name]))
  source = request.getfixturevalue("source_run") if uses_source else None
  report = source if name == SOURCE_RUN else trainer.train(_config(name, data), workdir)
  assert 0.0 <= report["accuracy"] <= 1.0 and np.isfinite(report["loss"])
  test_split = _config(name, data).data.test_split
  assert report == json.loads((workdir / "eval" / test_split / "report.json").read_text())
  losses = [row["train/loss"] for row in read_metrics(workdir) if "train/loss" in row]
  assert losses and all(np.isfinite(losses))
  # The keys landed in the run's resolved config, as given.
  resolved = _flat(config_lib.load_resolved(workdir))
  for key, value in _flat(_config(name, data)).items():
    assert resolved[key] == value, (key, resolved[key], value)
