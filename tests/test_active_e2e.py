"""Active learning end to end on tiny data: the simulation (killed mid-round and resumed), warm
starting, and the real mode's Label Studio round trip."""

from __future__ import annotations

import csv
import dataclasses
import json
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image
import pytest

from conftest import REPO, child_env, class_pattern, run_module, tiny_config, write_idx_dataset
from test_active import check_label_studio_tasks
import wandb_offline
from vision.active import real, simulate
from vision.checkpoint import CHECKPOINTS

pytestmark = pytest.mark.slow
STEPS = 12
INITIAL, QUERY = 32, 16


def _wandb_env(root: pathlib.Path) -> dict[str, str]:
  return {"WANDB_MODE": "offline", "WANDB_SILENT": "true",
          "WANDB_CONFIG_DIR": str(root / "wandb-config"), "WANDB_CACHE_DIR": str(root / "wandb-cache")}


@pytest.fixture(scope="module")
def simulation(tmp_path_factory):
  """A 2-strategy, 2-round simulation, killed with SIGKILL inside margin's round 1, then re-run."""
  root = tmp_path_factory.mktemp("active")
  data = write_idx_dataset(root / "idx", train=256, test=64)
  workdir = root / "al"
  args = [f"--config=tests/configs/tiny.py:source=idx:{data},steps={STEPS}", f"--workdir={workdir}",
          "--simulate", "--strategy=margin,coreset", f"--initial_labels={INITIAL}",
          f"--query_size={QUERY}", "--rounds=2", "--seeds=1", "--full_data_accuracy=0.99",
          "--config.train.checkpoint_every_steps=4"]
  killed_round = workdir / "margin/seed-0/round-1"
  process = subprocess.Popen([sys.executable, "-m", "experiments.active_learn", *args], cwd=REPO,
                             env=child_env(**_wandb_env(root)), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
  try:
    deadline = time.monotonic() + 1500  # a guard against hangs; idle, round 1 starts in ~30 s
    while not (killed_round / CHECKPOINTS / "4").exists():
      assert process.poll() is None, process.stderr.read().decode()[-3000:]
      assert time.monotonic() < deadline, "round 1 never saved a checkpoint"
      time.sleep(0.05)
  finally:
    process.send_signal(signal.SIGKILL)
    process.wait()
  assert not (killed_round / simulate.RESULT).exists(), "killed too late to test the resume"
  finished = workdir / "initial/seed-0" / simulate.RESULT
  before = finished.stat().st_mtime_ns
  rerun = run_module("experiments.active_learn", *args, extra_env=_wandb_env(root), timeout=1500)
  return {"workdir": workdir, "data": data, "root": root, "rerun": rerun,
          "round0_mtime": (before, finished.stat().st_mtime_ns)}


def _last_wandb_run(workdir: pathlib.Path):
  """The run record of the newest W&B run file in `workdir` (a killed process leaves an older,
  unfinished one beside it), once W&B's service has written its exit record."""
  deadline = time.monotonic() + 60
  while True:
    records = wandb_offline.read_records(wandb_offline.find_run_files(workdir)[-1])
    if records and records[-1].WhichOneof("record_type") == "exit":
      return next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert time.monotonic() < deadline, f"the W&B run in {workdir} never finished"
    time.sleep(0.1)


def test_simulation_writes_the_curve_and_resumes_without_redoing_rounds(simulation):
  workdir, rerun = simulation["workdir"], simulation["rerun"]
  # The killed round resumed from its checkpoint; the finished round 0 was not redone.
  assert "resumed from step 4" in rerun.stderr
  assert simulation["round0_mtime"][0] == simulation["round0_mtime"][1]
  assert "initial seed 0 round 0: training" not in rerun.stderr
  assert len(wandb_offline.find_run_files(workdir / "initial/seed-0")) == 1

  rows = json.loads((workdir / "curve.json").read_text())
  assert {(r["strategy"], r["round"]) for r in rows} == {
      (s, k) for s in ("margin", "coreset") for k in range(3)}
  for row in rows:
    assert {"strategy", "seed", "round", "num_labels", "test_accuracy", "macro_f1"} <= set(row)
    assert row["num_labels"] == INITIAL + QUERY * row["round"] and row["seed"] == 0
    assert 0 <= row["macro_f1"] <= 1 and row["test_accuracy"] > 0.5  # the quadrant task is easy
    assert row["train_seconds"] > 0 and "load" in row
  assert (workdir / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  table = (workdir / "curve.md").read_text()
  assert "| margin | 1 |" in table and "| coreset | 1 |" in table and "vs all labels" in table

  # Each round's labelled set grows by the query, never twice the same image.
  for strategy in ("margin", "coreset"):
    sizes = []
    for k in (1, 2):
      round_dir = workdir / strategy / "seed-0" / f"round-{k}"
      labelled = np.load(round_dir / simulate.LABELLED)
      assert len(np.unique(labelled)) == len(labelled)
      sizes.append(len(labelled))
      query = json.loads((round_dir / simulate.SELECTION).read_text())
      assert query["strategy"] == strategy and len(query["chosen"]) == QUERY
      # One W&B run per round, in the strategy's group.
      run = _last_wandb_run(round_dir)
      assert run.run_group == strategy and run.display_name == f"{strategy}-seed0-round{k}"
    assert sizes == [INITIAL + QUERY, INITIAL + 2 * QUERY]
  assert "margin" in rerun.stdout and "curve: " in rerun.stdout


def test_warm_start_continues_from_the_previous_round(simulation):
  workdir, data = simulation["workdir"], simulation["data"]
  options = simulate.SimulationOptions(strategies=("margin",), seeds=1, initial_labels=INITIAL,
                                       query_size=QUERY, rounds=1, warm_start=True)
  rows = simulate.simulate(tiny_config(f"idx:{data}", steps=STEPS), workdir, options)
  warm = workdir / "margin-warm/seed-0/round-1"
  config = json.loads((warm / "config.json").read_text())
  assert config["model"]["init_from"] == str(workdir / "initial/seed-0")
  # The same model scored the same pool: the warm run asked for the same images as the cold one.
  np.testing.assert_array_equal(np.load(warm / simulate.LABELLED),
                                np.load(workdir / "margin/seed-0/round-1" / simulate.LABELLED))
  assert {(r["strategy"], r["round"]) for r in rows if r["warm_start"]} == {
      ("margin-warm", 0), ("margin-warm", 1)}


def _write_pool(root: pathlib.Path) -> dict[str, int]:
  """A flat-and-nested folder of RGB quadrant images (no class folders), a broken file and a note."""
  rng = np.random.default_rng(11)
  truth = {}
  for i in range(24):
    relative = ("" if i % 3 == 0 else "batch1/" if i % 3 == 1 else "batch1/day2/") + f"img{i:02d}.png"
    (root / relative).parent.mkdir(parents=True, exist_ok=True)
    grey = class_pattern(i % 4, rng)
    Image.fromarray(np.stack([grey, grey, grey // 2], axis=-1)).save(root / relative)
    truth[relative] = i % 4
  (root / "batch1/truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
  (root / "notes.txt").write_text("not an image")
  return truth


def _export(tasks: list[dict], truth: dict[str, int]) -> list[dict]:
  """What Label Studio's JSON export gives back once an annotator answered every task."""
  return [{"id": i, "data": task["data"], "predictions": task["predictions"], "annotations": [{
      "id": 100 + i, "was_cancelled": False, "created_at": "2026-11-29T10:00:00Z",
      "result": [{"from_name": "choice", "to_name": "image", "type": "choices",
                  "value": {"choices": [str(truth[task["data"]["path"]])]}}]}]}
          for i, task in enumerate(tasks, start=1)]


def test_real_mode_queries_label_studio_and_learns_from_the_export(simulation, tmp_path):
  pool = tmp_path / "pool"
  truth = _write_pool(pool)
  workdir = tmp_path / "al"
  config = tiny_config(f"idx:{simulation['data']}", steps=STEPS)
  options = real.RealOptions(strategy="margin", pool=f"folder:{pool}",
                             init_from=str(simulation["workdir"] / "initial/seed-0"), query_size=5)
  summary = real.run_round(config, workdir, options)
  assert summary["round"] == 0 and summary["num_queries"] == 5 and summary["unreadable"] == 2
  queries = workdir / "queries/round-0"
  tasks = check_label_studio_tasks(queries)
  acquisition = [t["data"]["acquisition"] for t in tasks]
  assert acquisition == sorted(acquisition, reverse=True)  # priority order
  assert len(tasks[0]["predictions"]) == 3 and all(t["data"]["path"] in truth for t in tasks)
  with open(queries / real.UNREADABLE_CSV, newline="") as handle:
    unreadable = {row["path"] for row in csv.DictReader(handle)}
  assert unreadable == {"batch1/truncated.png", "notes.txt"}

  export = tmp_path / "export.json"
  export.write_text(json.dumps(_export(tasks, truth)))
  answered = dataclasses.replace(options, labels=f"labelstudio:{export}")
  summary = real.run_round(config, workdir, answered)
  assert summary["round"] == 1 and summary["num_queries"] == 5
  labels = json.loads((workdir / real.LABELS_FILE).read_text())
  assert labels["labels"] == {t["data"]["path"]: str(truth[t["data"]["path"]]) for t in tasks}
  assert labels["trained_rounds"][0]["num_pool_labels"] == 5
  assert (workdir / "rounds/round-1/eval/test/report.json").exists()
  next_tasks = check_label_studio_tasks(workdir / "queries/round-1")
  assert not {t["data"]["path"] for t in next_tasks} & set(labels["labels"])

  # The same export again: nothing new to learn, the round's queries stand.
  again = real.run_round(config, workdir, answered)
  assert again["round"] == 1
  assert len(json.loads((workdir / real.LABELS_FILE).read_text())["trained_rounds"]) == 1


def test_command_errors_are_one_line(simulation, tmp_path):
  data = simulation["data"]
  result = run_module("experiments.active_learn", f"--config=tests/configs/tiny.py:source=idx:{data}",
                      f"--workdir={tmp_path}", "--simulate", "--strategy=margin,smallest",
                      check=False)
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      "error: --strategy='smallest' is unknown; expected one of random, least_confidence, "
      "margin, entropy, bald, coreset, badge")
