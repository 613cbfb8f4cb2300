"""The real training loop, end to end on tiny data: every source, devices, resume, NaN, W&B, CLIs."""

from __future__ import annotations

import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from conftest import REPO, child_env, run_module, tiny_config
import wandb_offline
from vision.checkpoint import CHECKPOINTS
from vision.train import loop

pytestmark = pytest.mark.slow
TINY = "tests/configs/tiny.py"


def read_metrics(workdir: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def saved_arrays(workdir: pathlib.Path, step: int) -> dict[str, np.ndarray]:
  """Every array of checkpoint `step` (model and optimizer), by path."""
  manager = ocp.CheckpointManager(workdir.absolute() / CHECKPOINTS,
                                  item_names=("model", "optimizer"),
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  restored = manager.restore(step, args=ocp.args.Composite(
      model=ocp.args.StandardRestore(), optimizer=ocp.args.StandardRestore()))
  manager.close()
  leaves = {}
  for item in ("model", "optimizer"):
    for path, value in _flatten(restored[item]):
      leaves[f"{item}/{path}"] = np.asarray(value)
  return leaves


def _flatten(tree, prefix=""):
  if isinstance(tree, dict):
    for key, value in tree.items():
      yield from _flatten(value, f"{prefix}{key}/")
  else:
    yield prefix, tree


def test_idx_run_writes_everything_and_the_clis_read_it(tmp_path, idx_dir):
  workdir = tmp_path / "run"
  result = run_module("experiments.train", f"--config={TINY}:source=idx:{idx_dir}",
                      f"--workdir={workdir}", "--config.data.class_names=('a','b','c','d')")
  assert "test accuracy" in result.stdout
  assert {"config.json", "model_card.json", "metrics.jsonl"} <= {p.name for p in workdir.iterdir()}
  report = json.loads((workdir / "eval/test/report.json").read_text())
  assert report["class_names"] == ["a", "b", "c", "d"] and report["num_examples"] == 128
  assert report["accuracy"] > 0.9, report["accuracy"]  # the quadrant task is easy
  assert (workdir / "eval/test/confusion_matrix.png").stat().st_size > 1000
  assert (workdir / "eval/val/report.json").exists()
  metrics = read_metrics(workdir)
  assert [m["step"] for m in metrics] == [3, 6, 9, 12]
  assert {"train/loss", "train/accuracy", "lr", "val/accuracy"} <= set(metrics[1])
  assert metrics[-1]["test/accuracy"] == pytest.approx(report["accuracy"])

  # The W&B run (offline) holds the same values.
  run_file = wandb_offline.wait_for_run_file(workdir)
  history = wandb_offline.read_history(run_file)
  logged = {row["_step"]: row for row in history}
  for row in metrics[:4]:
    assert logged[row["step"]]["train/loss"] == pytest.approx(row["train/loss"], rel=1e-6)
  assert logged[12]["test/accuracy"] == pytest.approx(report["accuracy"])
  config = wandb_offline.read_config(run_file)
  assert config["model"]["name"] == "small_cnn" and config["train"]["num_steps"] == 12

  # evaluate: same numbers as the end of training.
  evaluated = run_module("experiments.evaluate", f"--workdir={workdir}", "--split=test")
  assert f"{report['accuracy']:.4f}" in evaluated.stdout
  again = json.loads((workdir / "eval/test/report.json").read_text())
  assert again["confusion_matrix"] == report["confusion_matrix"]

  # predict: one JSON line per image, an error line for a broken file, exit status 1.
  from conftest import class_pattern  # pylint: disable=import-outside-toplevel
  images = []
  for label in (0, 3):
    path = tmp_path / f"quadrant{label}.png"
    Image.fromarray(class_pattern(label, np.random.default_rng(label))).save(path)
    images.append(path)
  broken = tmp_path / "broken.png"
  broken.write_bytes(b"not an image")
  result = run_module("experiments.predict", f"--workdir={workdir}", str(images[0]), str(broken),
                      str(images[1]), check=False)
  lines = [json.loads(line) for line in result.stdout.splitlines()]
  assert result.returncode == 1 and len(lines) == 3
  assert lines[1]["file"] == str(broken) and "error" in lines[1]
  assert [lines[0]["top"][0]["label"], lines[2]["top"][0]["label"]] == ["a", "d"]
  assert len(lines[0]["top"]) == 4 and sum(t["prob"] for t in lines[0]["top"]) == pytest.approx(1, abs=1e-4)
  assert set(lines[0]["top"][0]) == {"label", "index", "prob"}


def test_folder_source_trains_in_process(tmp_path, folder_dir, caplog):
  """A truncated JPEG and macOS `._` files are skipped and counted up front, never met later."""
  jpeg = io.BytesIO()
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(
      jpeg, format="JPEG")
  (folder_dir / "circle" / "broken.jpg").write_bytes(jpeg.getvalue()[:2000])
  (folder_dir / "square" / "._000.png").write_bytes(b"\0\5\26\7 AppleDouble")
  config = tiny_config(f"folder:{folder_dir}")
  config.data.image_size = 16
  config.data.test_fraction = 0.125
  report = loop.train(config, tmp_path / "run")
  assert report["class_names"] == ["circle", "square", "triangle", "zigzag"]
  assert report["num_examples"] == 12
  skipped = [r.getMessage() for r in caplog.records if " skipped " in r.getMessage()]
  assert skipped and "skipped 2 of 98 files (macos-companion: 1, truncated: 1)" in skipped[0]
  card = json.loads((tmp_path / "run/model_card.json").read_text())
  assert card["channels"] == 3 and card["image_size"] == 16 and card["num_classes"] == 4


def test_tfds_source_trains_through_mock_data_in_bfloat16(tmp_path):
  with tfds.testing.mock_data(num_examples=256):
    config = tiny_config("tfds:fashion_mnist", steps=6)
    config.model.dtype = "bfloat16"
    report = loop.train(config, tmp_path / "run")
  assert report["class_names"][9] == "Ankle boot" and report["num_examples"] == 256
  metrics = read_metrics(tmp_path / "run")
  assert all(np.isfinite(m["train/loss"]) for m in metrics)
  kernels = [v for k, v in saved_arrays(tmp_path / "run", 6).items()
             if k.startswith("model/") and k.endswith("kernel/")]
  assert len(kernels) >= 4 and all(v.dtype == np.float32 for v in kernels)  # fp32 parameters


def test_one_and_eight_devices_give_the_same_losses(tmp_path, idx_dir):
  losses = {}
  for devices in (1, 8):
    workdir = tmp_path / f"devices{devices}"
    run_module("experiments.train", f"--config={TINY}:source=idx:{idx_dir},steps=8",
               f"--workdir={workdir}", "--config.train.log_every_steps=1", devices=devices)
    losses[devices] = [m["train/loss"] for m in read_metrics(workdir) if "train/loss" in m]
  assert len(losses[1]) == 8
  np.testing.assert_allclose(losses[8], losses[1], rtol=1e-5)


def _start_training(workdir: pathlib.Path, idx_dir: pathlib.Path, steps: int) -> subprocess.Popen:
  env = child_env()
  return subprocess.Popen(
      [sys.executable, "-m", "experiments.train", f"--config={TINY}:source=idx:{idx_dir},steps={steps}",
       f"--workdir={workdir}", "--config.train.checkpoint_every_steps=4",
       "--config.train.eval_every_steps=1000", "--config.data.crop_padding=2",
       "--config.data.flip=True", "--config.model.dropout=0.1",
       # Pruning masks (optimizer state) must resume exactly too.
       "--config.prune.sparsity=0.6", "--config.prune.start=0.0", "--config.prune.end=0.5",
       "--config.prune.update_every=3"],
      cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sigkill_and_rerun_ends_bit_identical(tmp_path, idx_dir):
  steps = 120
  uninterrupted, interrupted = tmp_path / "uninterrupted", tmp_path / "interrupted"
  process = _start_training(interrupted, idx_dir, steps)
  deadline = time.monotonic() + 240
  while not (interrupted / CHECKPOINTS / "8").exists():
    assert process.poll() is None, process.stderr.read().decode()[-3000:]
    assert time.monotonic() < deadline, "no checkpoint appeared"
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert not (interrupted / CHECKPOINTS / str(steps)).exists(), "killed too late to test resume"
  for workdir in (interrupted, uninterrupted):
    process = _start_training(workdir, idx_dir, steps)
    _, stderr = process.communicate(timeout=400)
    assert process.returncode == 0, stderr.decode()[-3000:]
  expected, got = saved_arrays(uninterrupted, steps), saved_arrays(interrupted, steps)
  assert expected.keys() == got.keys() and len(expected) > 10
  assert any("masks" in key for key in expected)
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
  steps_logged = [m["step"] for m in read_metrics(interrupted)]
  assert steps_logged == sorted(set(steps_logged)), "metrics.jsonl repeats steps after resume"


def test_nan_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path, idx_dir):
  workdir = tmp_path / "run"
  run_module("experiments.train", f"--config={TINY}:source=idx:{idx_dir}", f"--workdir={workdir}")
  before = saved_arrays(workdir, 12)
  result = run_module("experiments.train", f"--config={TINY}:source=idx:{idx_dir},steps=30",
                      f"--workdir={workdir}", "--config.optim.learning_rate=1e30",
                      "--config.optim.schedule=constant", check=False)
  assert result.returncode == 2
  error_lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(error_lines) == 1 and "Traceback" not in result.stderr
  assert "loss became NaN/Inf" in error_lines[0] and "step 12" in error_lines[0]
  checkpoints = sorted(int(p.name) for p in (workdir / CHECKPOINTS).iterdir() if p.name.isdigit())
  assert checkpoints[-1] == 12
  after = saved_arrays(workdir, 12)
  for key in before:
    np.testing.assert_array_equal(after[key], before[key])
    assert np.all(np.isfinite(after[key])), key


def test_two_processes_train_through_jax_distributed(tmp_path, idx_dir):
  """Two processes on loopback, joined by jax.distributed, each reading its shard of the data."""
  multi = tmp_path / "multi"
  port = 20000 + os.getpid() % 20000
  processes = []
  for process_id in range(2):
    env = child_env(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                    JAX_PROCESS_ID=str(process_id))
    processes.append(subprocess.Popen(
        [sys.executable, "-m", "experiments.train", f"--config={TINY}:source=idx:{idx_dir}",
         f"--workdir={multi}"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
  for process in processes:
    _, stderr = process.communicate(timeout=400)
    assert process.returncode == 0, stderr.decode()[-4000:]
  metrics = read_metrics(multi)
  assert [m["step"] for m in metrics] == [3, 6, 9, 12]  # written once, by process 0
  assert metrics[3]["train/loss"] < metrics[0]["train/loss"]
  report = json.loads((multi / "eval/test/report.json").read_text())
  assert report["num_examples"] == 128  # both processes' shards, gathered
  assert report["accuracy"] > 0.9
  assert (multi / CHECKPOINTS / "12" / "data").exists()
