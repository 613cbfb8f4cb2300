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
import signal
import socket
import subprocess
import time
from typing import Any, Sequence

from vision import comparison
from vision.config import ConfigError, check_override_keys
from vision.files import write_atomically, write_text_atomically

log = logging.getLogger("vision")

METHODS = ("grid", "random", "tpe")
GOALS = ("maximize", "minimize")
KINDS = ("uniform", "log_uniform", "int")
RESULTS_CSV = "results.csv"
RESULTS_PLOT = "results.png"
DATABASE = "sweep.db"
TRIAL_LOG = "sweep_trial.log"
HEARTBEAT_EVERY_S = 30.0
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
  path = trial_dir / "metrics.jsonl"
  final: dict[str, float] = {}
  if not path.exists():
    return final
  for line in path.read_text().splitlines():
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue
    final.update({k: v for k, v in row.items()
                  if k.split("/")[0] in ("val", "test") and isinstance(v, (int, float))})
  return final


def _error_line(output: str, returncode: int) -> str:
  lines = [line.strip() for line in output.splitlines() if line.strip()]
  errors = [line for line in lines if line.startswith("error:")]
  last = errors[-1] if errors else (lines[-1] if lines else "")
  return f"exit status {returncode}: {last}"[:1000]


# ------------------------------------------------------------------ the driver

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
    self.workdir.mkdir(parents=True, exist_ok=True)
    self.storage_url = storage or f"sqlite:///{self.workdir / DATABASE}"
    self.env = env
    self.host, self.pid = socket.gethostname(), os.getpid()
    self.running: dict[int, _Running] = {}
    self.study = self._open_study()

  def _open_study(self):
    import optuna  # pylint: disable=import-outside-toplevel
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
      study = optuna.create_study(
          storage=self.storage_url, study_name=self.spec.name, sampler=self.spec.sampler(),
          direction=self.spec.goal, load_if_exists=True)
    except ImportError as error:
      raise ConfigError(
          f"--storage {self.storage_url}: database driver missing ({error})") from None
    except Exception as error:  # SQLAlchemy's many URL and connection errors.
      if type(error).__module__.startswith(("sqlalchemy", "optuna")):
        raise ConfigError(f"--storage {self.storage_url}: {error}") from None
      raise
    if self.spec.method == "grid" and not study.user_attrs.get("grid_enqueued"):
      for point in self.spec.grid():
        study.enqueue_trial(point)
      study.set_user_attr("grid_enqueued", True)
    study.set_user_attr("metric", self.spec.metric)
    study.set_user_attr("params", [p.key for p in self.spec.params])
    return study

  def trial_dir(self, number: int) -> pathlib.Path:
    return self.workdir / f"trial-{number}"

  # -- one trial
  def _launch(self, trial_id: int, number: int, params: dict) -> None:
    storage = self.study._storage  # pylint: disable=protected-access
    trial_dir = self.trial_dir(number)
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
                       ("workdir", str(trial_dir)), ("command", command)):
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
      if attrs.get("host") == self.host:
        gone = not _alive(attrs.get("driver_pid")) and not _alive(attrs.get("child_pid"))
      else:
        gone = now - attrs.get("heartbeat", 0.0) > STALE_AFTER_S
      if gone or "driver_pid" not in attrs and now - trial.datetime_start.timestamp() > 60:
        orphans.append(trial)
    return orphans

  def _start_next(self) -> bool:
    """Starts one trial (an interrupted one first); False when none is left to start."""
    import optuna  # pylint: disable=import-outside-toplevel
    orphans = self._orphans()
    if orphans:
      trial = orphans[0]
      log.info("trial %d was interrupted; restarting it (resumes its workdir)", trial.number)
      self._launch(trial._trial_id, trial.number, trial.params)  # pylint: disable=protected-access
      return True
    started = [t for t in self.study.get_trials(deepcopy=False)
               if t.state != optuna.trial.TrialState.WAITING]
    if len(started) >= self.spec.num_trials:
      return False
    trial = self.study.ask({p.key: p.distribution() for p in self.spec.params})
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
      if trial.state == optuna.trial.TrialState.WAITING:
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
