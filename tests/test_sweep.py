"""Sweeps end to end: parallel trials, a kill mid-sweep and a resume, results.csv, W&B groups.

The finished sweep's trial directories are then reused as models: as an ensemble
for experiments.evaluate and as the teacher of a distillation run.
"""

from __future__ import annotations

import csv
import json
import pathlib
import signal
import subprocess
import sys
import time

from flax import nnx
import jax
import numpy as np
import pytest

from conftest import REPO, child_env, run_module
import wandb_offline
from test_train import saved_arrays
from vision import sweep as sweep_lib
from vision.checkpoint import load_model

pytestmark = pytest.mark.slow
SWEEP = "tests/configs/tiny_sweep.py"
DISTILL = "tests/configs/tiny_distill.py"


def read_results(workdir: pathlib.Path) -> list[dict]:
  path = workdir / sweep_lib.RESULTS_CSV
  if not path.exists():
    return []
  with open(path, newline="") as file:
    return list(csv.DictReader(file))


def trial_states(workdir: pathlib.Path) -> dict[int, str]:
  """Trial number → state name, read from the sweep's Optuna database."""
  import optuna  # pylint: disable=import-outside-toplevel
  study = optuna.load_study(study_name=None, storage=f"sqlite:///{workdir / sweep_lib.DATABASE}")
  return {trial.number: trial.state.name for trial in study.get_trials(deepcopy=False)
          if trial.state != optuna.trial.TrialState.WAITING}


def run_group_and_ids(trial_dir: pathlib.Path) -> tuple[set[str], set[str]]:
  groups, ids = set(), set()
  for path in wandb_offline.find_run_files(trial_dir):
    for record in wandb_offline.read_records(path):
      if record.WhichOneof("record_type") == "run":
        groups.add(record.run.run_group)
        ids.add(record.run.run_id)
  return groups, ids


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> pathlib.Path:
  """A finished tiny sweep that was killed once in the middle and resumed."""
  from conftest import write_idx_dataset  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("sweep")
  idx = write_idx_dataset(root / "idx")
  workdir = root / "sweep"
  args = [f"--config={SWEEP}:source=idx:{idx},steps=6", f"--workdir={workdir}", "--parallel=2"]
  env = child_env(WANDB_MODE="offline", WANDB_SILENT="true",
                  WANDB_CONFIG_DIR=str(root / "wandb-config"))
  driver = subprocess.Popen([sys.executable, "-m", "experiments.sweep", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  deadline = time.monotonic() + 600
  while True:
    statuses = [row["status"] for row in read_results(workdir)]
    if "COMPLETE" in statuses and "RUNNING" in statuses:
      break
    assert driver.poll() is None, driver.stderr.read().decode()[-3000:]
    assert time.monotonic() < deadline, statuses
    time.sleep(0.2)
  driver.send_signal(signal.SIGKILL)  # No chance to clean up: the database says RUNNING.
  driver.wait()
  driver.stderr.close()
  # The database, not results.csv (rewritten just after each trial is told), is what the
  # resumed driver acts on: a kill between the two leaves the CSV one trial behind.
  before = trial_states(workdir)
  finished = {k for k, state in before.items() if state in ("COMPLETE", "FAIL")}
  interrupted = {k for k, state in before.items() if state == "RUNNING"}
  snapshots = {k: (workdir / f"trial-{k}" / "metrics.jsonl").read_bytes()
               for k in finished if before[k] == "COMPLETE"}

  result = run_module("experiments.sweep", *args,
                      extra_env={"WANDB_MODE": "offline", "WANDB_SILENT": "true",
                                 "WANDB_CONFIG_DIR": str(root / "wandb-config")})
  assert "4 complete, 1 failed of 5 trials" in result.stdout, result.stdout
  for k, content in snapshots.items():  # Finished trials were not run again.
    assert (workdir / f"trial-{k}" / "metrics.jsonl").read_bytes() == content
    log = (workdir / f"trial-{k}" / sweep_lib.TRIAL_LOG).read_text()
    assert log.count("$ ") == 1, log
  for k in interrupted:  # Interrupted trials were started again, in the same workdir.
    log = (workdir / f"trial-{k}" / sweep_lib.TRIAL_LOG).read_text()
    assert log.count("$ ") == 2, log
  assert interrupted
  return workdir


def test_sweep_is_resumed_and_leaves_results_and_one_wandb_run_per_trial(sweep_dir):
  rows = read_results(sweep_dir)
  assert [row["trial"] for row in rows] == ["0", "1", "2", "3", "4"]
  by_value = {row["train.label_smoothing"]: row for row in rows}
  assert set(by_value) == {"0.0", "0.05", "0.1", "0.2", "1.5"}
  failed = by_value.pop("1.5")
  assert failed["status"] == "FAIL"
  assert "train.label_smoothing" in failed["error"] and "[0, 1)" in failed["error"]
  for row in by_value.values():
    assert row["status"] == "COMPLETE"
    assert 0.0 <= float(row["val/accuracy"]) <= 1.0 and float(row["test/accuracy"]) > 0.5
    assert float(row["wall_time_s"]) > 0
    trial_dir = pathlib.Path(row["workdir"])
    assert trial_dir.parent == sweep_dir and (trial_dir / "eval/test/report.json").exists()
    groups, ids = run_group_and_ids(trial_dir)
    assert groups == {"tiny-sweep"} and len(ids) == 1, (groups, ids)
    history = wandb_offline.read_history(wandb_offline.find_run_files(trial_dir)[-1])
    assert history[-1]["test/accuracy"] == pytest.approx(float(row["test/accuracy"]))
    config = json.loads((trial_dir / "config.json").read_text())
    assert config["train"]["label_smoothing"] == float(row["train.label_smoothing"])
  assert (sweep_dir / sweep_lib.RESULTS_PLOT).stat().st_size > 5000
  assert (sweep_dir / sweep_lib.DATABASE).exists()


def test_rerunning_a_finished_sweep_starts_nothing(sweep_dir):
  before = (sweep_dir / sweep_lib.RESULTS_CSV).read_text()
  result = run_module("experiments.sweep", f"--config={SWEEP}:source=idx:/nonexistent,steps=6",
                      f"--workdir={sweep_dir}", check=False)
  # The base config must be valid even to resume: the data path is checked first.
  assert result.returncode == 2 and result.stderr.startswith("error: config key 'data.source'")
  source = json.loads((sweep_dir / "trial-0" / "config.json").read_text())["data"]["source"]
  result = run_module("experiments.sweep", f"--config={SWEEP}:{source_arg(source)}",
                      f"--workdir={sweep_dir}")
  assert "4 complete, 1 failed of 5 trials" in result.stdout
  assert (sweep_dir / sweep_lib.RESULTS_CSV).read_text().count("\n") == before.count("\n")
  for k in range(5):
    assert (sweep_dir / f"trial-{k}" / sweep_lib.TRIAL_LOG).read_text().count("$ ") <= 2


def source_arg(source: str) -> str:
  return f"source={source},steps=6"


def test_evaluate_an_ensemble_of_trials_side_by_side(sweep_dir, tmp_path):
  members = [sweep_dir / "trial-0", sweep_dir / "trial-1"]
  single_before = (members[0] / "eval/test/report.json").read_text()
  result = run_module("experiments.evaluate", *(f"--workdir={m}" for m in members),
                      f"--output_dir={tmp_path / 'ens'}")
  lines = result.stdout.splitlines()
  # 4 classes: no top-5; the task's calibration scalars follow the fixed columns.
  assert lines[0].split() == ["model", "accuracy", "loss", "macro_f1", "ece", "ece_calibrated"]
  assert [line.split()[0] for line in lines[1:4]] == [str(members[0]), str(members[1]), "ensemble"]
  summary = json.loads((tmp_path / "ens/members.json").read_text())
  member_reports = [json.loads((m / "eval/test/report.json").read_text()) for m in members]
  for row, report in zip(summary["members"], member_reports):
    assert row["accuracy"] == pytest.approx(report["accuracy"])
    assert row["loss"] == pytest.approx(report["loss"], rel=1e-5)
  ensemble = json.loads((tmp_path / "ens/report.json").read_text())
  assert ensemble["accuracy"] == summary["ensemble"]["accuracy"]
  assert ensemble["num_examples"] == member_reports[0]["num_examples"]
  # The members' own reports are untouched.
  assert (members[0] / "eval/test/report.json").read_text() == single_before


def test_distill_from_an_ensemble_teacher(sweep_dir, tmp_path):
  idx = json.loads((sweep_dir / "trial-0/config.json").read_text())["data"]["source"][len("idx:"):]
  teachers = f"{sweep_dir / 'trial-0'}+{sweep_dir / 'trial-1'}"
  student = tmp_path / "student"
  run_module("experiments.train", f"--config={DISTILL}:source=idx:{idx},teachers={teachers}",
             f"--workdir={student}")
  metrics = [json.loads(line) for line in (student / "metrics.jsonl").read_text().splitlines()]
  for key in ("train/kl", "train/teacher_accuracy", "train/agreement", "val/teacher_accuracy",
              "val/agreement", "val/accuracy"):
    assert key in metrics[-1] or key in metrics[-2], (key, metrics[-1])
  val = [m for m in metrics if "val/agreement" in m][-1]
  assert 0.0 <= val["val/agreement"] <= 1.0 and val["val/teacher_accuracy"] > 0.5
  history = wandb_offline.read_history(wandb_offline.wait_for_run_file(student))
  logged = {key for row in history for key in row}
  assert {"train/agreement", "train/teacher_accuracy", "val/agreement",
          "val/teacher_accuracy", "val/accuracy"} <= logged

  # The student's checkpoint holds the student only: exactly the arrays of its own model.
  step = max(int(p.name) for p in (student / "checkpoints").iterdir() if p.name.isdigit())
  saved = {k[len("model/"):].rstrip("/"): v.shape
           for k, v in saved_arrays(student, step).items() if k.startswith("model/")}
  model, _ = load_model(student)
  own = {"/".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape)
         for path, leaf in jax.tree_util.tree_leaves_with_path(
             nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.RngState))))}
  assert saved == own
  teacher = sum(v.size for k, v in saved_arrays(sweep_dir / "trial-0", 6).items()
                if k.startswith("model/"))
  assert sum(np.prod(shape) for shape in saved.values()) < teacher / 3
