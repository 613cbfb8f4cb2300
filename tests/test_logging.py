"""Tests for vision.logging: JSON-lines and offline W&B writers, W&B mode."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import wandb

from vision import logging as vlog

import wandb_offline

_WANDB_VARS = (
  "WANDB_API_KEY",
  "WANDB_BASE_URL",
  "WANDB_PROJECT",
  "WANDB_ENTITY",
  "WANDB_NAME",
  "WANDB_RUN_ID",
  "WANDB_RESUME",
  "WANDB_DIR",
  "WANDB_RUN_GROUP",
  "WANDB_TAGS",
  "WANDB_SILENT",
  "NETRC",
)


@pytest.fixture
def home(tmp_path, monkeypatch):
  """An empty HOME and no W&B variables from the outside environment."""
  home = tmp_path / "home"
  home.mkdir()
  monkeypatch.setenv("HOME", str(home))
  for var in _WANDB_VARS + ("WANDB_MODE",):
    monkeypatch.delenv(var, raising=False)
  return home


@pytest.fixture
def offline(home, tmp_path, monkeypatch):
  """WANDB_MODE=offline with W&B's config/cache dirs in tmp; resets wandb."""
  monkeypatch.setenv("WANDB_MODE", "offline")
  for var, sub in (
    ("WANDB_CONFIG_DIR", "config"),
    ("WANDB_CACHE_DIR", "cache"),
    ("WANDB_DATA_DIR", "data"),
  ):
    monkeypatch.setenv(var, str(tmp_path / "wandb-home" / sub))
  yield
  wandb.finish()
  wandb.teardown()  # Forget settings read from this test's environment.


def _user_keys(row: dict) -> dict:
  """A history row without W&B's own _runtime/_timestamp."""
  return {k: v for k, v in row.items() if k not in ("_runtime", "_timestamp")}


def _run_record(path):
  return next(
    r.run for r in wandb_offline.read_records(path) if r.WhichOneof("record_type") == "run"
  )


def _read_jsonl(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


# --- W&B, offline, read back from the .wandb file ----------------------------


def test_offline_run_round_trips_history_config_and_summary(offline, tmp_path):
  workdir = tmp_path / "exp1"
  config = {"lr": 0.1, "model": {"name": "resnet", "depth": 18}, "seed": 7}
  run = vlog.init_wandb(config, workdir, project="test", entity=None, name=None)
  assert run.offline
  assert (workdir / "wandb_run_id.txt").read_text().strip() == run.id

  writer = vlog.create_metric_writer(workdir, run=run)
  expected = []
  for step in range(5):
    scalars = {
      "loss": 1.0 / (step + 1),
      "acc": np.float32(0.125) * step,
      "lr": jnp.asarray(0.5) ** step,
      "epoch": step // 2,
    }
    writer.write_scalars(step, scalars)
    expected.append(
      {
        "_step": step,
        "loss": 1.0 / (step + 1),
        "acc": 0.125 * step,
        "lr": 0.5**step,
        "epoch": step // 2,
      }
    )
  writer.write_images(
    5, {"sample": np.zeros((8, 6, 3), np.uint8), "batch": np.ones((2, 4, 4, 1), np.float32)}
  )
  writer.write_summary({"best/acc": 0.5})
  writer.close()

  path = wandb_offline.wait_for_run_file(workdir)
  assert path.parent.parent == workdir / "wandb"
  history = wandb_offline.read_history(path)
  assert [_user_keys(row) for row in history[:5]] == expected
  images = history[5]
  assert images["_step"] == 5
  assert images["sample"]["_type"] == "image-file"
  assert (images["sample"]["height"], images["sample"]["width"]) == (8, 6)
  assert images["batch"]["_type"] == "images/separated"
  assert images["batch"]["count"] == 2

  got_config = wandb_offline.read_config(path)
  assert {k: got_config[k] for k in config} == config
  assert wandb_offline.read_summary(path)["best/acc"] == 0.5
  record = _run_record(path)
  assert (record.project, record.display_name, record.run_id) == ("test", "exp1", run.id)

  # The JSON-lines file got the same scalars.
  assert [
    dict(row, _step=row.pop("step")) for row in _read_jsonl(workdir / "metrics.jsonl")
  ] == expected


def test_second_init_in_same_workdir_resumes_the_run(offline, tmp_path, monkeypatch):
  monkeypatch.setenv("WANDB_PROJECT", "from-env")
  monkeypatch.setenv("WANDB_NAME", "named-by-env")
  workdir = tmp_path / "exp2"

  first = vlog.init_wandb(
    {"lr": 0.1}, workdir, project=None, entity=None, name=None, tags=("a", "b"), group="g"
  )
  run_id = first.id
  writer = vlog.create_metric_writer(workdir, run=first)
  for step in range(3):
    writer.write_scalars(step, {"loss": float(step)})
  writer.close()

  # The same command again, restored from the checkpoint at step 1.
  second = vlog.init_wandb({"lr": 0.1}, workdir, project=None, entity=None, name=None)
  assert second.id == run_id
  assert (workdir / "wandb_run_id.txt").read_text().strip() == run_id
  writer = vlog.create_metric_writer(workdir, run=second, resume_step=1)
  for step in range(2, 4):
    writer.write_scalars(step, {"loss": 10.0 + step})
  writer.close()

  files = wandb_offline.wait_for_run_files(workdir, count=2)
  assert all(f.name == f"run-{run_id}.wandb" for f in files)
  histories = [[_user_keys(r) for r in wandb_offline.read_history(f)] for f in files]
  assert histories == [
    [{"_step": s, "loss": float(s)} for s in range(3)],
    [{"_step": s, "loss": 10.0 + s} for s in range(2, 4)],
  ]
  record = _run_record(files[0])
  assert (record.project, record.display_name, record.run_group, list(record.tags)) == (
    "from-env",
    "named-by-env",
    "g",
    ["a", "b"],
  )
  assert [r["step"] for r in _read_jsonl(workdir / "metrics.jsonl")] == [0, 1, 2, 3]
  assert _read_jsonl(workdir / "metrics.jsonl")[2]["loss"] == 12.0


def test_disabled_mode_writes_no_wandb_files(offline, tmp_path):
  workdir = tmp_path / "exp3"
  run = vlog.init_wandb({"lr": 0.1}, workdir, project=None, entity=None, name=None, mode="disabled")
  writer = vlog.create_metric_writer(workdir, run=run)
  writer.write_scalars(0, {"loss": 1.0})
  writer.write_summary({"best": 1.0})
  writer.close()
  assert wandb_offline.find_run_files(workdir) == []
  assert _read_jsonl(workdir / "metrics.jsonl") == [{"step": 0, "loss": 1.0}]


# --- WandbWriter without W&B --------------------------------------------------


class _FakeRun:
  def __init__(self, starting_step=0):
    self.starting_step = starting_step
    self.logged, self.summary, self.finished = [], {}, False

  def log(self, data, step):
    self.logged.append((step, data))

  def finish(self):
    self.finished = True


def test_wandb_writer_skips_steps_wandb_already_has():
  run = _FakeRun(starting_step=10)  # An online resume: W&B has steps 0..9.
  writer = vlog.WandbWriter(run)
  for step in (8, 9, 10, 11, 11, 7, 12):
    writer.write_scalars(step, {"loss": np.float64(step)})
  writer.write_summary({"best": jnp.asarray(3.0)})
  writer.close()
  assert run.logged == [
    (10, {"loss": 10.0}),
    (11, {"loss": 11.0}),
    (11, {"loss": 11.0}),
    (12, {"loss": 12.0}),
  ]
  assert all(type(d["loss"]) is float for _, d in run.logged)
  assert run.summary == {"best": 3.0} and run.finished


def test_non_main_process_writes_nothing(tmp_path):
  run = _FakeRun()
  writer = vlog.create_metric_writer(tmp_path, run=run, is_main_process=False)
  writer.write_scalars(0, {"loss": 1.0})
  writer.write_images(0, {"x": np.zeros((2, 2, 3), np.uint8)})
  writer.write_summary({"best": 1.0})
  writer.close()
  assert list(tmp_path.iterdir()) == [] and run.logged == [] and not run.finished


# --- JsonlWriter ---------------------------------------------------------------


def test_jsonl_writer_writes_valid_json_lines_with_non_finite_values(tmp_path):
  path = tmp_path / "m" / "metrics.jsonl"
  writer = vlog.JsonlWriter(path)
  writer.write_scalars(1, {"loss": np.float32(0.5), "n": np.int64(3), "j": jnp.asarray(2.0)})
  # Visible before close: every line is flushed.
  assert path.read_text() == '{"step": 1, "loss": 0.5, "n": 3, "j": 2.0}\n'
  writer.write_scalars(
    2, {"nan": float("nan"), "inf": np.inf, "ninf": jnp.asarray(-np.inf), "ok": 1.25}
  )
  writer.write_images(2, {"x": np.zeros((2, 2, 3))})  # No-op.
  writer.close()

  lines = path.read_text().splitlines()
  assert len(lines) == 2
  # Strict JSON: no bare NaN/Infinity tokens.
  strict = [json.loads(line, parse_constant=pytest.fail) for line in lines]
  assert strict[1] == {"step": 2, "nan": "NaN", "inf": "Infinity", "ninf": "-Infinity", "ok": 1.25}
  assert type(strict[0]["n"]) is int and type(strict[0]["loss"]) is float


def _write_lines(path, steps, tail=""):
  path.write_text("".join(json.dumps({"step": s, "loss": s / 10}) + "\n" for s in steps) + tail)


def test_jsonl_writer_resume_drops_later_and_truncated_lines(tmp_path):
  path = tmp_path / "metrics.jsonl"
  _write_lines(path, range(1, 8), tail='{"step": 8, "loss": 0.')  # Killed.
  writer = vlog.JsonlWriter(path, resume_step=4)
  writer.write_scalars(5, {"loss": 5.5})
  writer.close()
  rows = _read_jsonl(path)
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
  assert rows[-1]["loss"] == 5.5
  assert not list(tmp_path.glob(".metrics.jsonl.*"))  # Temp file renamed away.


def test_jsonl_writer_without_resume_step_keeps_lines_but_repairs_tail(tmp_path):
  path = tmp_path / "metrics.jsonl"
  _write_lines(path, range(3), tail='{"step": 3, "lo')
  writer = vlog.JsonlWriter(path)
  writer.write_scalars(3, {"loss": 0.3})
  writer.close()
  assert [r["step"] for r in _read_jsonl(path)] == [0, 1, 2, 3]

  untouched = path.stat().st_mtime_ns
  vlog.JsonlWriter(path, resume_step=10).close()  # Nothing to drop.
  assert path.stat().st_mtime_ns == untouched


def test_jsonl_writer_merges_a_second_write_for_the_same_step(tmp_path):
  path = tmp_path / "metrics.jsonl"
  writer = vlog.JsonlWriter(path)
  writer.write_scalars(1, {"loss": 1.0})
  writer.write_scalars(2, {"loss": 0.5})
  writer.write_scalars(2, {"test/accuracy": 0.9})
  writer.close()
  assert _read_jsonl(path) == [{"step": 1, "loss": 1.0},
                               {"step": 2, "loss": 0.5, "test/accuracy": 0.9}]
  reopened = vlog.JsonlWriter(path)  # e.g. experiments.train re-run after it finished
  reopened.write_scalars(2, {"test/accuracy": 0.95})
  reopened.close()
  assert _read_jsonl(path)[-1] == {"step": 2, "loss": 0.5, "test/accuracy": 0.95}


# --- wandb_mode ---------------------------------------------------------------


def test_wandb_mode_config_beats_env(home, monkeypatch):
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
  assert vlog.wandb_mode("disabled") == "disabled"
  assert vlog.wandb_mode("Online") == "online"
  assert vlog.wandb_mode(None) == "offline"
  monkeypatch.setenv("WANDB_MODE", "disabled")
  assert vlog.wandb_mode() == "disabled"
  with pytest.raises(ValueError, match="sometimes"):
    vlog.wandb_mode("sometimes")


def test_wandb_mode_detects_login(home, monkeypatch):
  assert vlog.wandb_mode() == "offline"  # No key anywhere.

  netrc = home / ".netrc"
  netrc.write_text("machine example.com\n  login me\n  password secret\n")
  netrc.chmod(0o600)
  assert vlog.wandb_mode() == "offline"  # A key, but not for W&B.

  key = "k" * 40
  netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {key}\n")
  assert vlog.wandb_mode() == "online"
  netrc.write_text("machine api.wandb.ai login user password\n")  # Broken.
  assert vlog.wandb_mode() == "offline"

  netrc.unlink()
  monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
  assert vlog.wandb_mode() == "online"


def test_read_records_handles_multi_chunk_records(offline, tmp_path):
  """A config bigger than a block spans FIRST/MIDDLE/LAST chunks."""
  workdir = tmp_path / "big"
  big = {f"key{i:04d}": "v" * 100 for i in range(800)}  # ~90 KiB of config.
  run = vlog.init_wandb(big, workdir, project=None, entity=None, name=None)
  vlog.create_metric_writer(workdir, run=run).close()
  path = wandb_offline.wait_for_run_file(workdir)
  assert path.stat().st_size > 2 * wandb_offline.BLOCK_SIZE
  chunk_types = {t for t, _ in wandb_offline.iter_chunks(path.read_bytes(), path)}
  assert chunk_types == {
    wandb_offline.FULL,
    wandb_offline.FIRST,
    wandb_offline.MIDDLE,
    wandb_offline.LAST,
  }
  config = wandb_offline.read_config(path)
  assert {k: config[k] for k in big} == big
