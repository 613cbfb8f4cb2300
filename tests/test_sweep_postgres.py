"""Sweeps scale out through one Optuna study on a real PostgreSQL server: two workers, one grid.

The server is Debian's `postgresql` (installed by `.ci/setup test` with apt-get), started here in
a temporary directory on a free local port and stopped afterwards.
"""

from __future__ import annotations

import glob
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import REPO, child_env, write_idx_dataset
from vision import sweep as sweep_lib

pytestmark = pytest.mark.slow
SWEEP = "tests/configs/tiny_sweep.py"


def _postgres_bin() -> pathlib.Path:
  found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
  if not found:
    pytest.fail("Debian's postgresql is not installed; `bash .ci/setup test` installs it "
                "(apt-get install postgresql, as root)")
  return pathlib.Path(found[-1]).parent


def _free_port() -> int:
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    return probe.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
  """A fresh PostgreSQL server (trust auth, 127.0.0.1 only); yields an SQLAlchemy URL."""
  bindir = _postgres_bin()
  # PostgreSQL refuses to run as root: as root, run it as Debian's `postgres` user.
  as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
  base = pathlib.Path(tempfile.mkdtemp(prefix="vision-postgres-"))
  if as_user:
    shutil.chown(base, "postgres", "postgres")
  data, port = base / "data", _free_port()
  subprocess.run([*as_user, bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust",
                  "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
  server = subprocess.Popen(
      [*as_user, bindir / "postgres", "-D", data, "-h", "127.0.0.1", "-p", str(port),
       "-k", base, "-c", "fsync=off"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  try:
    deadline = time.monotonic() + 60
    while subprocess.run([bindir / "pg_isready", "-h", "127.0.0.1", "-p", str(port)],
                         capture_output=True).returncode != 0:
      assert server.poll() is None, server.stderr.read().decode()[-2000:]
      assert time.monotonic() < deadline, "PostgreSQL did not start within 60 s"
      time.sleep(0.2)
    subprocess.run([bindir / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                    "sweeps"], check=True, capture_output=True)
    yield f"postgresql://postgres@127.0.0.1:{port}/sweeps"
  finally:
    server.terminate()  # SIGTERM: PostgreSQL's smart shutdown
    try:
      server.wait(timeout=30)
    except subprocess.TimeoutExpired:
      server.kill()
      server.wait()
    server.stderr.close()
    shutil.rmtree(base, ignore_errors=True)


def test_two_workers_share_one_study_each_trial_runs_once(postgres_url, tmp_path):
  import optuna  # pylint: disable=import-outside-toplevel
  idx = write_idx_dataset(tmp_path / "idx")
  env = child_env(WANDB_MODE="offline", WANDB_SILENT="true",
                  WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"))
  # Two drivers, as on two machines: own workdirs, one study in one database, started together.
  workers = [subprocess.Popen(
      [sys.executable, "-m", "experiments.sweep", f"--config={SWEEP}:source=idx:{idx},steps=6",
       f"--workdir={tmp_path / f'worker{i}'}", f"--storage={postgres_url}"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outputs = [worker.communicate(timeout=840) for worker in workers]
  for worker, (stdout, stderr) in zip(workers, outputs):
    assert worker.returncode == 0, stderr[-3000:]
    # Each driver waits for the other's trials, then reports the whole study.
    assert "tiny-sweep: 4 complete, 1 failed of 5 trials" in stdout, stdout

  study = optuna.load_study(study_name="tiny-sweep", storage=postgres_url)
  trials = study.get_trials(deepcopy=False)
  used = [t for t in trials if not t.user_attrs.get(sweep_lib.UNUSED)]
  assert all("workdir" not in t.user_attrs for t in trials if t not in used)  # never started
  # Every grid point is one recorded trial, finished; none is left waiting or running.
  assert sorted(t.number for t in used) == [0, 1, 2, 3, 4]
  assert sorted(t.params["train.label_smoothing"] for t in used) == [0.0, 0.05, 0.1, 0.2, 1.5]
  assert sorted(t.state.name for t in used) == ["COMPLETE"] * 4 + ["FAIL"]
  ran_by = {t.number: pathlib.Path(t.user_attrs["workdir"]).parent.name for t in used}
  assert set(ran_by.values()) == {"worker0", "worker1"}, ran_by  # both drivers took trials
  for number, worker in ran_by.items():
    other = "worker1" if worker == "worker0" else "worker0"
    assert not (tmp_path / other / f"trial-{number}").exists()
    log = (tmp_path / worker / f"trial-{number}" / sweep_lib.TRIAL_LOG).read_text()
    assert log.count("$ ") == 1, log  # started once, by one driver
  for i in range(2):
    rows = (tmp_path / f"worker{i}" / sweep_lib.RESULTS_CSV).read_text().splitlines()
    assert len(rows) == 6 and sum(",COMPLETE," in row for row in rows) == 4, rows
