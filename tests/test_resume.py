"""Resuming a workdir: judged before anything is written; early stopping; split fingerprints."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib

import numpy as np
import pytest

from conftest import REPO, run_module, tiny_config, write_folder_dataset, write_idx_dataset
from vision import checkpoint as checkpoint_lib
from vision.checkpoint import IncompatibleCheckpoint
from vision.config import ConfigError
from vision.data import fingerprint
from vision.data.sources import SplitOptions, open_dataset
from vision.evaluate import evaluate as evaluate_lib
from vision.evaluate.predict import predict_files
from vision.logging import read_metrics
from vision.train import early_stopping, loop

TINY = "tests/configs/tiny.py"


def tree_digest(root: pathlib.Path) -> dict[str, str]:
  """Every file under `root` (relative path → sha256 of its bytes) and every directory.

  W&B's own debug logs (`wandb/*/logs/`) are left out: its background service may still append
  to them after the run that started it has exited.
  """
  digest = {}
  for path in sorted(root.rglob("*")):
    relative = str(path.relative_to(root))
    if relative.startswith("wandb/") and "/logs/" in relative:
      continue
    digest[relative] = (hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file()
                        else "dir")
  return digest


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
  """(idx data, workdir) of a finished 6-step tiny run."""
  root = tmp_path_factory.mktemp("resume")
  idx = write_idx_dataset(root / "idx")
  workdir = root / "run"
  loop.train(tiny_config(f"idx:{idx}", steps=6), workdir)
  return idx, workdir


@pytest.mark.slow
def test_resume_with_another_architecture_is_one_line_and_changes_nothing(trained, tmp_path):
  idx, workdir = trained
  before = tree_digest(workdir)
  result = run_module("experiments.train", f"--config={TINY}:source=idx:{idx},steps=12",
                      f"--workdir={workdir}", "--config.model.widths=(16,32)", check=False)
  assert result.returncode == 2, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
  assert ("tensor 'hidden.kernel' is (256, 128) float32 in the checkpoint but (512, 128) "
          "float32 in this config's model") in lines[0]
  assert "config keys changed since that run: model.widths, train.num_steps" in lines[0]
  assert "new --workdir" in lines[0] and f"model.init_from={workdir}" in lines[0]
  assert tree_digest(workdir) == before  # byte for byte: not even config.json was rewritten

  # The good workdir still evaluates and predicts.
  report = evaluate_lib.evaluate_workdir(workdir, "test")
  assert report["accuracy"] == json.loads((workdir / "eval/test/report.json").read_text())[
      "accuracy"]
  from PIL import Image  # pylint: disable=import-outside-toplevel
  image = tmp_path / "x.png"
  Image.fromarray(np.full((16, 16), 200, np.uint8)).save(image)
  [result] = list(predict_files(workdir, [str(image)], k=2))
  assert len(result["top"]) == 2 and "error" not in result


def test_resume_with_another_optimizer_names_it_and_changes_nothing(trained):
  idx, workdir = trained
  before = tree_digest(workdir)
  config = tiny_config(f"idx:{idx}", steps=6)
  config.optim.name = "adamw"
  with pytest.raises(IncompatibleCheckpoint, match=r"holds a checkpoint \(step 6\) of another "
                     r"optimizer state: .*config keys changed since that run: optim.name\)"):
    loop.train(config, workdir)
  assert tree_digest(workdir) == before


def test_a_model_directory_whose_card_and_checkpoint_disagree_is_one_line(trained, tmp_path):
  _, workdir = trained
  copy = tmp_path / "copy"
  os.system(f"cp -r {workdir} {copy}")  # noqa: S605  (a plain copy of a test directory)
  card = json.loads((copy / checkpoint_lib.MODEL_CARD).read_text())
  card["model_options"]["hidden"] = 64
  (copy / checkpoint_lib.MODEL_CARD).write_text(json.dumps(card))
  with pytest.raises(IncompatibleCheckpoint, match="does not hold the model its model_card.json "
                     "describes: tensor 'head.kernel' is"):
    checkpoint_lib.load_model(copy)
  (copy / checkpoint_lib.MODEL_CARD).write_text("{not json")
  with pytest.raises(ConfigError, match="model_card.json is not a model card"):
    checkpoint_lib.load_model(copy)
  (copy / checkpoint_lib.MODEL_CARD).write_text((workdir / checkpoint_lib.MODEL_CARD).read_text())
  (copy / "checkpoints/6/model/_METADATA").unlink()  # a damaged Orbax checkpoint
  with pytest.raises(IncompatibleCheckpoint) as error:
    checkpoint_lib.load_model(copy)
  assert str(error.value).startswith(f"cannot read the checkpoint {copy}/checkpoints/6/model: ")
  assert "\n" not in str(error.value)


# ------------------------------------------------------------------ early stopping

def test_early_stopping_rule_counts_evaluations_without_improvement():
  class Train:  # the two config keys
    early_stopping_patience = 2
    early_stopping_min_delta = 0.05

  stopper = early_stopping.EarlyStopping.from_config(Train, metric="val/loss",
                                                     higher_is_better=False)
  losses = {10: 1.0, 20: 0.97, 30: 0.90, 40: 0.88, 50: 0.86}
  stops = [stopper.update(step, {"val/loss": value}) for step, value in losses.items()]
  # 0.97 is not 0.05 below 1.0 (1); 0.90 is (reset, best 0.90 at 30); 0.88 (1), 0.86 (2): stop.
  assert stops == [False, False, False, False, True]
  assert (stopper.best, stopper.best_step, stopper.stopped_step) == (0.90, 30, 50)
  assert stopper.update(60, {"val/loss": 0.1})  # stays stopped
  replayed = early_stopping.EarlyStopping.from_config(Train, metric="val/loss",
                                                      higher_is_better=False)
  replayed.replay([{"step": s, "val/loss": v} for s, v in losses.items()], up_to_step=40)
  assert not replayed.stopped and replayed.evaluations_without_improvement == 1
  off = early_stopping.EarlyStopping("val/loss", False, None)
  assert not any(off.update(s, {"val/loss": 5.0}) for s in range(10))


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path, dict]:
  """A tiny run on a folder source that stops early: (data, workdir, its test report)."""
  root = tmp_path_factory.mktemp("early")
  data = write_folder_dataset(root / "folder")
  workdir = root / "run"
  config = tiny_config(f"folder:{data}", steps=12)
  config.train.eval_every_steps = 2
  config.train.early_stopping_patience = 2
  # No accuracy rises by more than 1: evaluations 2 (the first, best), 4 and 6 (two without
  # improvement) — the run stops at step 6 of 12.
  config.train.early_stopping_min_delta = 1.0
  report = loop.train(config, workdir)
  return data, workdir, report


def _trained_steps(workdir: pathlib.Path) -> list[int]:
  return [row["step"] for row in read_metrics(workdir) if "train/loss" in row]


def test_early_stopping_ends_the_run_and_tests_the_best_checkpoint(stopped_run):
  _, workdir, report = stopped_run
  assert max(_trained_steps(workdir)) == 6
  checkpoints = checkpoint_lib.Checkpoints(workdir, read_only=True)
  assert checkpoints.latest_step() == 6
  best = checkpoints.best_step()
  checkpoints.close()
  record = json.loads((workdir / early_stopping.STOP_FILE).read_text())
  assert record["stopped_step"] == 6 and record["best_step"] == 2 and record["patience"] == 2
  assert record["reason"].startswith("early stopping at step 6: val/accuracy has not risen by "
                                     "more than 1 for 2 evaluations")
  val = {row["step"]: row["val/accuracy"] for row in read_metrics(workdir)
         if "val/accuracy" in row}
  assert sorted(val) == [2, 4, 6]
  assert val[best] == max(val.values())  # the best checkpoint by the metric ...
  tested = evaluate_lib.evaluate_workdir(workdir, "test", which="best")
  assert report["accuracy"] == tested["accuracy"]  # ... is the one tested


def test_a_stopped_run_resumed_does_not_train_further(stopped_run):
  data, workdir, report = stopped_run
  config = tiny_config(f"folder:{data}", steps=12)
  config.train.eval_every_steps = 2
  config.train.early_stopping_patience = 2
  config.train.early_stopping_min_delta = 1.0
  again = loop.train(config, workdir)
  assert max(_trained_steps(workdir)) == 6
  assert again["accuracy"] == report["accuracy"]


# ------------------------------------------------------------------ split fingerprints

def _paths_by_split(data: pathlib.Path, config) -> dict[str, set[str]]:
  options = SplitOptions(val_fraction=config.data.val_fraction,
                         test_fraction=config.data.test_fraction)
  dataset = open_dataset(f"folder:{data}", options)
  return {name: {os.path.relpath(dataset.splits[name].base.paths[i], data)
                 for i in dataset.splits[name].indices} for name in ("train", "val", "test")}


def test_resuming_on_changed_splits_names_the_split_and_count(stopped_run, tmp_path):
  data, workdir, _ = stopped_run
  moved = tmp_path / "moved"
  os.system(f"cp -r {data} {moved}")  # noqa: S605  (the data is changed in a copy)
  # The same data at another path is the same data.
  fingerprint.check_unchanged(workdir, fingerprint.split_fingerprints(
      open_dataset(f"folder:{moved}", SplitOptions(val_fraction=0.125)),
      ("train", "val", "test")))

  config = tiny_config(f"folder:{moved}", steps=12)
  before = _paths_by_split(moved, config)
  victim = sorted((moved / "square").iterdir())[5]
  victim.unlink()
  after = _paths_by_split(moved, config)
  expected = {name: (len(after[name] - before[name]), len(before[name] - after[name]))
              for name in before}
  assert expected["train"][1] >= 1  # the file itself, at least
  changed = [name for name, counts in expected.items() if counts != (0, 0)]
  assert len(changed) >= 2  # deleting one file re-carves val/test too

  snapshot = tree_digest(workdir)
  with pytest.raises(fingerprint.SplitsChanged) as error:
    loop.train(config, workdir)
  message = str(error.value)
  assert "\n" not in message
  for name in changed:
    new, gone = expected[name]
    assert (f"split '{name}' has {max(new, gone)} changed items ({new} new, {gone} gone; "
            f"{len(after[name])} now, {len(before[name])} before)") in message, message
  assert "new --workdir" in message
  assert tree_digest(workdir) == snapshot
