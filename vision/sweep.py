"""Hyperparameter sweeps: each trial a normal training run, sweep state in an Optuna database.

    spec = load_sweep("configs/sweep_fashion_mnist.py", arg="smoke")
    Sweep(spec, train_command=[sys.executable, "-m", "experiments.train"],
          config="configs/sweep_fashion_mnist.py:smoke", workdir="runs/sweep",
          parallel=2).run()

A config file defines its sweep next to its base config with `get_sweep(arg)`,
returning a plain dict:

    def get_sweep(arg=None):
      return {
          "method": "random",              # 'grid', 'random' or 'tpe' (Optuna's TPE)
          "num_trials": 8,                 # random/tpe; a grid runs every point once
          "metric": "val/accuracy",        # a key of the trial's metrics.jsonl (final value)
          "goal": "maximize",              # or 'minimize'
          "parameters": {                  # config keys
              "optim.learning_rate": {"log_uniform": (0.01, 0.5)},
              "model.dropout": {"uniform": (0.0, 0.3)},
              "optim.warmup_epochs": {"int": (0, 2)},
              "model.widths": [(16, 32), (24, 48, 96)],   # a list: the choices
          },
      }

Optional keys: `name` (the study name and W&B group; default: the config file
name), `seed` (of the sampler) and `baseline`, e.g. `{"distill.variant": "alone"}`:
each other value of that swept key is compared with it, paired by the other
keys (seeds), in `comparison.json` (`vision.comparison`). A grid takes lists only.

Each trial K is `train_command --config=CONFIG --workdir=WORKDIR/trial-K
--config.KEY=VALUE...` in its own process, so it resumes like any run. Its
parameters, state, metrics, error and wall time live in the Optuna storage
(`sqlite:///WORKDIR/sweep.db` unless another SQLAlchemy URL is given), from
which `results.csv` and `results.png` are rewritten after every trial.
Re-running a sweep skips finished trials (complete or failed) and restarts
interrupted ones: running trials whose driver process is gone (same host) or
whose heartbeat is older than `STALE_AFTER_S` (other hosts).
"""

from __future__ import annotations

import csv
import ctypes
import dataclasses
import importlib.util
import io
import itertools
import json
import logging
import math
import os
import pathlib
import random
import signal
import socket
import subprocess
import time
from typing import Any, Sequence

from vision import comparison
from vision.config import ConfigError, check_override_keys
from vision.files import write_atomically, write_text_atomically
from vision.logging import read_metrics

log = logging.getLogger("vision")

METHODS = ("grid", "random", "tpe")
GOALS = ("maximize", "minimize")
KINDS = ("uniform", "log_uniform", "int")
RESULTS_CSV = "results.csv"
RESULTS_PLOT = "results.png"
DATABASE = "sweep.db"
TRIAL_LOG = "sweep_trial.log"
HEARTBEAT_EVERY_S = 30.0
# How long a driver waits for another that claimed a new grid study to queue its points.
GRID_WAIT_S = 120.0
# How long a popped trial may go without its driver's attributes before it counts as orphaned.
LAUNCH_GRACE_S = 60.0
# Retries of create_study while another driver creates Optuna's tables (see _create_or_load_study).
SCHEMA_RACE_ATTEMPTS = 5
# A trial asked past the budget by a racing driver: never run, left out of the results.
UNUSED = "unused"
CLAIMS_TABLE = "vision_sweep_claims"
# A running trial whose driver has not been heard of for this long is taken over.
STALE_AFTER_S = 300.0


# ------------------------------------------------------------------ the spec

@dataclasses.dataclass(frozen=True)
class Param:
  """One swept config key: a list of choices, or a numeric range."""
  key: str
  kind: str  # 'choice' or one of KINDS
  choices: tuple = ()
  low: float = 0.0
  high: float = 0.0

  @property
  def encoded_choices(self) -> list:
    # Optuna stores scalars only; tuples (e.g. model.widths) travel as JSON text.
    return [_encode(c) for c in self.choices]

  def distribution(self):
    import optuna  # pylint: disable=import-outside-toplevel  (slow import)
    if self.kind == "choice":
      return optuna.distributions.CategoricalDistribution(self.encoded_choices)
    if self.kind == "int":
      return optuna.distributions.IntDistribution(int(self.low), int(self.high))
    return optuna.distributions.FloatDistribution(
        self.low, self.high, log=self.kind == "log_uniform")

  def decode(self, value: Any) -> Any:
    if self.kind != "choice":
      return value
    return dict(zip(self.encoded_choices, self.choices))[value]


def _encode(value: Any) -> Any:
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  return json.dumps(list(value) if isinstance(value, tuple) else value)


def format_override(key: str, value: Any) -> str:
  """`--config.KEY=VALUE` as ml_collections' config flags parse it."""
  if isinstance(value, (list, tuple)):
    text = "(" + ", ".join(repr(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  elif isinstance(value, float):
    text = repr(value)
  else:
    text = str(value)
  return f"--config.{key}={text}"


@dataclasses.dataclass(frozen=True)
class SweepSpec:
  """A validated `get_sweep()` dict."""
  name: str
  method: str
  params: tuple[Param, ...]
  num_trials: int
  metric: str = "val/accuracy"
  goal: str = "maximize"
  seed: int = 0
  # {swept key: its baseline value}, or None.
  baseline: dict | None = None

  @classmethod
  def from_dict(cls, raw: dict, default_name: str) -> "SweepSpec":
    where = "get_sweep()"
    if not isinstance(raw, dict):
      raise ConfigError(f"{where} must return a dict, got {type(raw).__name__}")
    known = {"name", "method", "parameters", "num_trials", "metric", "goal", "seed", "baseline"}
    unknown = sorted(set(raw) - known)
    if unknown:
      raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; "
                        f"known: {', '.join(sorted(known))}")
    method = raw.get("method", "grid")
    if method not in METHODS:
      raise ConfigError(f"{where}['method'] is {method!r}; expected one of {', '.join(METHODS)}")
    goal = raw.get("goal", "maximize")
    if goal not in GOALS:
      raise ConfigError(f"{where}['goal'] is {goal!r}; expected one of {', '.join(GOALS)}")
    parameters = raw.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
      raise ConfigError(f"{where}['parameters'] must be a non-empty dict of config keys")
    check_override_keys(parameters)
    params = tuple(_parse_param(key, value, method) for key, value in parameters.items())
    grid_size = math.prod(len(p.choices) for p in params) if method == "grid" else 0
    num_trials = raw.get("num_trials", grid_size)
    if not isinstance(num_trials, int) or num_trials < 1:
      raise ConfigError(f"{where}['num_trials'] must be a positive int for method '{method}', "
                        f"got {num_trials!r}")
    return cls(name=str(raw.get("name") or default_name), method=method, params=params,
               num_trials=num_trials, metric=raw.get("metric", "val/accuracy"), goal=goal,
               seed=int(raw.get("seed", 0)), baseline=_parse_baseline(raw.get("baseline"), params))

  def sampler(self):
    import optuna  # pylint: disable=import-outside-toplevel
    if self.method in ("grid", "random"):
      # A grid's points are enqueued trials (see Sweep._enqueue_grid); Optuna's GridSampler
      # would stop the study from outside an optimize() loop.
      return optuna.samplers.RandomSampler(seed=self.seed)
      return optuna.samplers.RandomSampler(seed=self.seed)
    return optuna.samplers.TPESampler(seed=self.seed)

  def grid(self) -> list[dict]:
    """Every point of a grid sweep, in order (the last key varies fastest)."""
    return [dict(zip((p.key for p in self.params), point))
            for point in itertools.product(*(p.encoded_choices for p in self.params))]

  def overrides(self, params: dict) -> list[str]:
    return [format_override(p.key, p.decode(params[p.key])) for p in self.params]


def _parse_param(key: str, value: Any, method: str) -> Param:
  where = f"get_sweep()['parameters']['{key}']"
  if isinstance(value, (list, tuple)):
    if not value:
      raise ConfigError(f"{where} is an empty list of choices")
    return Param(key, "choice", choices=tuple(value))
  if method == "grid":
    raise ConfigError(f"{where}: a grid sweeps lists of values only, got {value!r}")
  if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in KINDS:
    raise ConfigError(f"{where} must be a list of choices or one of "
                      f"{{'uniform'|'log_uniform'|'int': (low, high)}}, got {value!r}")
  kind, bounds = next(iter(value.items()))
  if (not isinstance(bounds, (list, tuple)) or len(bounds) != 2
      or not all(isinstance(b, (int, float)) for b in bounds) or not bounds[0] < bounds[1]):
    raise ConfigError(f"{where}: {kind} needs (low, high) with low < high, got {bounds!r}")
  if kind == "log_uniform" and bounds[0] <= 0:
    raise ConfigError(f"{where}: log_uniform needs low > 0, got {bounds[0]}")
  return Param(key, kind, low=bounds[0], high=bounds[1])


def _parse_baseline(baseline: Any, params: tuple[Param, ...]) -> dict | None:
  if baseline is None:
    return None
  choices = {p.key: p.choices for p in params if p.kind == "choice"}
  if (not isinstance(baseline, dict) or len(baseline) != 1
      or next(iter(baseline)) not in choices or next(iter(baseline.values())) not in
      choices[next(iter(baseline))]):
    raise ConfigError(f"get_sweep()['baseline'] must be {{KEY: VALUE}} with KEY a swept list "
                      f"({', '.join(choices) or 'none here'}) and VALUE one of its choices, "
                      f"got {baseline!r}")
  return dict(baseline)


def load_sweep(config_file: str | os.PathLike, arg: str | None = None) -> SweepSpec:
  """The sweep a config file defines with `get_sweep(arg)`."""
  path = pathlib.Path(config_file)
  module_spec = importlib.util.spec_from_file_location(f"sweep_config_{path.stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    raise ConfigError(f"config file {path} defines no get_sweep(); see README, 'Sweeps'")
  try:
    raw = module.get_sweep(arg)
  except TypeError:
    raw = module.get_sweep()
  return SweepSpec.from_dict(raw, default_name=path.stem)


# ------------------------------------------------------------------ metrics of a trial

def final_metrics(trial_dir: pathlib.Path) -> dict[str, float]:
  """The last logged value of every `val/` and `test/` scalar in metrics.jsonl."""
  final: dict[str, float] = {}
  for row in read_metrics(trial_dir):
    final.update({k: v for k, v in row.items()
                  if k.split("/")[0] in ("val", "test") and isinstance(v, (int, float))})
  return final


def _error_line(output: str, returncode: int) -> str:
  lines = [line.strip() for line in output.splitlines() if line.strip()]
  errors = [line for line in lines if line.startswith("error:")]
  last = errors[-1] if errors else (lines[-1] if lines else "")
  return f"exit status {returncode}: {last}"[:1000]


# ------------------------------------------------------------------ the driver

class Claims:
  """Claims that exactly one driver wins: a row INSERTed into the study's own database.

  Optuna serialises trial creation and the WAITING → RUNNING pop of queued trials, but not
  "queue this grid" or "restart that interrupted trial": the primary key of this table does
  (on SQLite and PostgreSQL alike), so two drivers never queue a grid twice or both restart
  one trial.
  """

  def __init__(self, url: str, study_name: str):
    import sqlalchemy  # pylint: disable=import-outside-toplevel  (comes with Optuna)
    self._sa, self.study_name = sqlalchemy, study_name
    connect_args = {"timeout": 60} if url.startswith("sqlite") else {}
    self.engine = sqlalchemy.create_engine(url, connect_args=connect_args)
    metadata = sqlalchemy.MetaData()
    self.table = sqlalchemy.Table(
        CLAIMS_TABLE, metadata,
        sqlalchemy.Column("study", sqlalchemy.String(512), primary_key=True),
        sqlalchemy.Column("claim", sqlalchemy.String(512), primary_key=True),
        sqlalchemy.Column("owner", sqlalchemy.String(512)),
        sqlalchemy.Column("claimed_at", sqlalchemy.Float))
    for attempt in range(3):
      try:
        metadata.create_all(self.engine)
        break
      except sqlalchemy.exc.DatabaseError:  # another driver created it at the same moment
        if attempt == 2:
          raise
        time.sleep(0.5)

  def claim(self, key: str, owner: str) -> bool:
    """True for the one caller that claims `key` first (in this study), False for the rest."""
    try:
      with self.engine.begin() as connection:
        connection.execute(self.table.insert().values(
            study=self.study_name, claim=key, owner=owner, claimed_at=time.time()))
      return True
    except self._sa.exc.IntegrityError:
      return False


def _die_with_parent() -> None:
  """In a trial process: SIGTERM when the driver dies, even by SIGKILL (Linux)."""
  try:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
  except OSError:
    pass


def _alive(pid: int | None) -> bool:
  if not pid:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  # A zombie child of ours counts as gone.
  try:
    return pathlib.Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
  except OSError:
    return True


@dataclasses.dataclass
class _Running:
  number: int
  trial_id: int
  process: subprocess.Popen
  log_file: io.TextIOBase
  started: float


class Sweep:
  """Runs the trials of `spec`, `parallel` at a time, until the budget is spent."""

  def __init__(self, spec: SweepSpec, *, train_command: Sequence[str], config: str,
               workdir: str | os.PathLike, parallel: int = 1, storage: str | None = None,
               overrides: Sequence[str] = (), env: dict | None = None):
    if parallel < 1:
      raise ConfigError(f"--parallel must be >= 1, got {parallel}")
    self.spec, self.parallel = spec, parallel
    self.train_command, self.config, self.overrides = list(train_command), config, list(overrides)
    self.workdir = pathlib.Path(workdir).absolute()
    if storage is None:  # the default SQLite file lives in the workdir
      self.workdir.mkdir(parents=True, exist_ok=True)
    self.storage_url = storage or f"sqlite:///{self.workdir / DATABASE}"
    self.env = env
    self.host, self.pid = socket.gethostname(), os.getpid()
    self.owner = f"{self.host}:{self.pid}"
    self.running: dict[int, _Running] = {}
    self.study = self._open_study()  # a wrong --storage fails here, before the workdir exists
    self.workdir.mkdir(parents=True, exist_ok=True)

  def _open_study(self):
    import optuna  # pylint: disable=import-outside-toplevel
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
      study = self._create_or_load_study(optuna)
    except ImportError as error:
      raise ConfigError(
          f"--storage {self.storage_url}: database driver missing ({error})") from None
    except Exception as error:  # SQLAlchemy's many URL and connection errors.
      if isinstance(error, ValueError) or type(error).__module__.startswith(
          ("sqlalchemy", "optuna", "psycopg")):
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise ConfigError(f"--storage {self.storage_url}: {lines[0] if lines else error!r} "
                          "(expected an SQLAlchemy URL such as sqlite:///PATH or "
                          "postgresql://USER@HOST/DATABASE)") from None
      raise
    self.claims = Claims(self.storage_url, self.spec.name)
    if self.spec.method == "grid":
      self._enqueue_grid(study)
    study.set_user_attr("metric", self.spec.metric)
    study.set_user_attr("params", [p.key for p in self.spec.params])
    return study

  def _create_or_load_study(self, optuna):
    """optuna.create_study, retried while another driver creates Optuna's tables at this moment.

    Two drivers starting together on an empty PostgreSQL database both run CREATE TABLE; the
    loser gets a unique violation on PostgreSQL's own catalogue (pg_type), not an error of ours.
    """
    attempts_left = SCHEMA_RACE_ATTEMPTS
    while True:
      try:
        return optuna.create_study(
            storage=self.storage_url, study_name=self.spec.name, sampler=self.spec.sampler(),
            direction=self.spec.goal, load_if_exists=True)
      except Exception as error:  # pylint: disable=broad-except  (re-raised unless the race)
        attempts_left -= 1
        racing = type(error).__module__.startswith("sqlalchemy") and any(
            sign in str(error) for sign in ("duplicate key", "already exists"))
        if not racing or not attempts_left:
          raise
        time.sleep(0.2 + random.random())  # apart, so the retries do not collide again

  def _enqueue_grid(self, study) -> None:
    """Queues every grid point once, however many drivers start on the study at once."""
    if study.user_attrs.get("grid_enqueued"):
      return  # a resumed sweep (also one whose database predates the claims table)
    if self.claims.claim("grid-enqueued", self.owner):
      for point in self.spec.grid():
        study.enqueue_trial(point)
      study.set_user_attr("grid_enqueued", True)
      return
    deadline = time.time() + GRID_WAIT_S
    while not study.user_attrs.get("grid_enqueued"):
      if time.time() > deadline:
        raise ConfigError(f"--storage {self.storage_url}: study '{self.spec.name}' was claimed by "
                          "another driver that never queued its grid; delete the study or use "
                          "another sweep name")
      time.sleep(0.5)  # user_attrs reads the storage afresh each time

  def trial_dir(self, number: int) -> pathlib.Path:
    return self.workdir / f"trial-{number}"

  # -- one trial
  def _launch(self, trial_id: int, number: int, params: dict, starts: int = 1,
              trial_dir: pathlib.Path | None = None) -> None:
    storage = self.study._storage  # pylint: disable=protected-access
    trial_dir = trial_dir or self.trial_dir(number)
    trial_dir.mkdir(parents=True, exist_ok=True)
    command = [*self.train_command, f"--config={self.config}", f"--workdir={trial_dir}",
               *self.overrides, *self.spec.overrides(params),
               f"--config.wandb.group={self.spec.name}",
               f"--config.wandb.name={self.spec.name}-trial-{number}"]
    log_file = open(trial_dir / TRIAL_LOG, "a", encoding="utf-8")
    log_file.write(f"$ {' '.join(command)}\n")
    log_file.flush()
    process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=self.env,
                               preexec_fn=_die_with_parent)
    for key, value in (("host", self.host), ("driver_pid", self.pid),
                       ("child_pid", process.pid), ("heartbeat", time.time()),
                       ("workdir", str(trial_dir)), ("command", command),
                       ("starts", starts)):
      storage.set_trial_user_attr(trial_id, key, value)
    self.running[number] = _Running(number, trial_id, process, log_file, time.time())
    shown = ", ".join(f"{p.key}={p.decode(params[p.key])}" for p in self.spec.params)
    log.info("trial %d started: %s", number, shown)

  def _finish(self, run: _Running) -> None:
    import optuna  # pylint: disable=import-outside-toplevel
    storage = self.study._storage  # pylint: disable=protected-access
    run.log_file.close()
    returncode = run.process.wait()
    previous = storage.get_trial_user_attrs(run.trial_id).get("wall_time_s", 0.0)
    storage.set_trial_user_attr(run.trial_id, "wall_time_s",
                                round(previous + time.time() - run.started, 1))
    metrics = final_metrics(self.trial_dir(run.number))
    storage.set_trial_user_attr(run.trial_id, "metrics", metrics)
    error = None
    if returncode != 0:
      error = _error_line((self.trial_dir(run.number) / TRIAL_LOG).read_text(), returncode)
    elif self.spec.metric not in metrics:
      error = (f"metric '{self.spec.metric}' was not logged; "
               f"logged: {', '.join(sorted(metrics)) or 'nothing'}")
    if error is None:
      self.study.tell(run.number, metrics[self.spec.metric])
      log.info("trial %d finished: %s=%.4f", run.number, self.spec.metric,
               metrics[self.spec.metric])
    else:
      storage.set_trial_user_attr(run.trial_id, "error", error)
      self.study.tell(run.number, state=optuna.trial.TrialState.FAIL)
      log.warning("trial %d failed: %s", run.number, error)
    self.write_results()

  # -- scheduling
  def _orphans(self) -> list:
    """Running trials in the database that no live driver is running."""
    import optuna  # pylint: disable=import-outside-toplevel
    orphans = []
    now = time.time()
    for trial in self.study.get_trials(deepcopy=False,
                                       states=(optuna.trial.TrialState.RUNNING,)):
      if trial.number in self.running:
        continue
      attrs = trial.user_attrs
      if "driver_pid" not in attrs:
        # Popped by a driver that has not yet written who runs it (it is starting the child).
        gone = now - trial.datetime_start.timestamp() > LAUNCH_GRACE_S
      elif attrs.get("host") == self.host:
        gone = not _alive(attrs.get("driver_pid")) and not _alive(attrs.get("child_pid"))
      else:
        gone = now - attrs.get("heartbeat", 0.0) > STALE_AFTER_S
      if gone:
        orphans.append(trial)
    return orphans

  def _start_next(self) -> bool:
    """Starts one trial (an interrupted one first); False when none is left to start."""
    import optuna  # pylint: disable=import-outside-toplevel
    for trial in self._orphans():
      # Several drivers may see the same orphan: one claim per restart decides who runs it.
      starts = trial.user_attrs.get("starts", 1) + 1
      if not self.claims.claim(f"restart-{trial.number}-{starts}", self.owner):
        continue
      log.info("trial %d was interrupted; restarting it (resumes its workdir)", trial.number)
      workdir = trial.user_attrs.get("workdir")
      self._launch(trial._trial_id, trial.number, trial.params, starts,  # pylint: disable=protected-access
                   pathlib.Path(workdir) if workdir else None)
      return True
    started = [t for t in self.study.get_trials(deepcopy=False)
               if t.state != optuna.trial.TrialState.WAITING and not t.user_attrs.get(UNUSED)]
    if len(started) >= self.spec.num_trials:
      return False
    trial = self.study.ask({p.key: p.distribution() for p in self.spec.params})
    if trial.number >= self.spec.num_trials:
      # Another driver took the last place between the count above and this ask (trial numbers
      # are dense and unique per study): this one never runs and is left out of the results.
      trial.set_user_attr(UNUSED, f"the budget of {self.spec.num_trials} trials was reached")
      self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
      return False
    self._launch(trial._trial_id, trial.number, trial.params)  # pylint: disable=protected-access
    return True

  def _others_running(self) -> bool:
    import optuna  # pylint: disable=import-outside-toplevel
    return any(t.number not in self.running for t in self.study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))

  def _heartbeat(self) -> None:
    storage = self.study._storage  # pylint: disable=protected-access
    for run in self.running.values():
      storage.set_trial_user_attr(run.trial_id, "heartbeat", time.time())

  def _stop_children(self, signum, _frame) -> None:
    for run in self.running.values():
      if run.process.poll() is None:
        run.process.terminate()
    for run in self.running.values():
      try:
        run.process.wait(timeout=30)
      except subprocess.TimeoutExpired:
        run.process.kill()
    # The interrupted trials stay RUNNING in the database: the next run restarts them.
    raise SystemExit(128 + signum)

  def run(self) -> list[dict]:
    """Runs the sweep to completion; returns the rows of results.csv."""
    for signum in (signal.SIGTERM, signal.SIGINT):
      signal.signal(signum, self._stop_children)
    last_heartbeat = time.time()
    exhausted = False
    while True:
      for number, run in list(self.running.items()):
        if run.process.poll() is not None:
          del self.running[number]
          self._finish(run)
      while not exhausted and len(self.running) < self.parallel:
        exhausted = not self._start_next()
      if not self.running:
        if self._orphans():
          exhausted = False
          continue
        if not self._others_running():
          break
        # Trials of another driver (or a killed driver's trial still exiting): wait for them.
        time.sleep(2)
        continue
      if time.time() - last_heartbeat > HEARTBEAT_EVERY_S:
        self._heartbeat()
        last_heartbeat = time.time()
      time.sleep(0.5)
    return self.write_results()

  # -- results
  def rows(self) -> list[dict]:
    """One row per trial: number, status, parameters, final metrics, wall time, error."""
    rows = []
    import optuna  # pylint: disable=import-outside-toplevel
    for trial in self.study.get_trials(deepcopy=False):
      if trial.state == optuna.trial.TrialState.WAITING or trial.user_attrs.get(UNUSED):
        continue
      attrs = trial.user_attrs
      row: dict[str, Any] = {"trial": trial.number, "status": trial.state.name}
      for p in self.spec.params:
        row[p.key] = p.decode(trial.params[p.key]) if p.key in trial.params else None
      row.update(attrs.get("metrics", {}))
      row["wall_time_s"] = attrs.get("wall_time_s")
      row["workdir"] = attrs.get("workdir", str(self.trial_dir(trial.number)))
      row["error"] = attrs.get("error", "")
      rows.append(row)
    return rows

  def write_results(self) -> list[dict]:
    rows = self.rows()
    write_results_csv(rows, self.workdir / RESULTS_CSV)
    plot_results(rows, self.spec, self.workdir / RESULTS_PLOT)
    if self.spec.baseline:
      write_text_atomically(self.workdir / comparison.COMPARISON_JSON,
                            json.dumps(self.comparison(rows), indent=2))
    return rows

  def comparison(self, rows: list[dict]) -> dict:
    """The `baseline` comparison of complete trials (see vision.comparison)."""
    (key, value), = self.spec.baseline.items()
    return comparison.paired_comparison(
        rows, key=key, baseline=value, metric=self.spec.metric,
        pair_by=[p.key for p in self.spec.params if p.key != key])


def write_results_csv(rows: list[dict], path: pathlib.Path) -> None:
  fixed_first = ["trial", "status"]
  fixed_last = ["wall_time_s", "workdir", "error"]
  middle = []
  for row in rows:
    middle += [k for k in row if k not in fixed_first + fixed_last and k not in middle]
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=fixed_first + middle + fixed_last)
  writer.writeheader()
  for row in rows:
    writer.writerow({k: (list(v) if isinstance(v, tuple) else v) for k, v in row.items()})
  write_text_atomically(path, buffer.getvalue())


def plot_results(rows: list[dict], spec: SweepSpec, path: pathlib.Path) -> None:
  """One panel per swept key: the metric of each complete trial against the key's value."""
  # pylint: disable=import-outside-toplevel
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  from matplotlib.ticker import NullFormatter
  done = [r for r in rows if r["status"] == "COMPLETE" and spec.metric in r]
  figure = Figure(figsize=(4 * len(spec.params), 3.2), layout="constrained")
  FigureCanvasAgg(figure)
  axes = figure.subplots(1, len(spec.params), squeeze=False)[0]
  for ax, param in zip(axes, spec.params):
    ys = [r[spec.metric] for r in done]
    if param.kind == "choice":
      labels = [str(c) for c in param.choices]
      xs = [labels.index(str(r[param.key])) for r in done]
      ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=8)
    else:
      xs = [r[param.key] for r in done]
      # The whole searched range, so a few trials are seen in context.
      if param.kind == "log_uniform":
        ax.set_xscale("log")
        ax.set_xlim(param.low / 1.2, param.high * 1.2)
        ax.xaxis.set_minor_formatter(NullFormatter())
      else:
        margin = 0.05 * (param.high - param.low)
        ax.set_xlim(param.low - margin, param.high + margin)
    ax.scatter(xs, ys, color="tab:blue")
    ax.set_xlabel(param.key)
    ax.set_ylabel(spec.metric)
    ax.grid(alpha=0.3)
  figure.suptitle(f"{spec.name}: {len(done)} of {len(rows)} trials complete")
  write_atomically(path, lambda tmp: figure.savefig(tmp, format="png", dpi=90))
