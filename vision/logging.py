"""Metric writers for training runs: a JSON-lines file plus Weights & Biases.

Every writer has the method names of CLU's ``MetricWriter``, so the training loop
only ever calls ``writer.write_scalars(step, {...})``. Each run writes
``workdir/metrics.jsonl`` (one JSON object per call, always valid JSON) and,
when a W&B run is given, the same values to W&B. Re-running the same command
in the same workdir resumes the same W&B run (its id is kept in
``workdir/wandb_run_id.txt``) and trims ``metrics.jsonl`` back to the restored
checkpoint step, so a run killed after its last checkpoint does not log those
steps twice.

Usage::

    from vision import logging as vlog

    run = None
    if jax.process_index() == 0:
        run = vlog.init_wandb(config.to_dict(), workdir, project=None,
                              entity=None, name=None, tags=("resnet",))
    writer = vlog.create_metric_writer(
        workdir, run=run, resume_step=restored_step,
        is_main_process=jax.process_index() == 0)
    for step in range(restored_step + 1, num_steps + 1):
        ...
        writer.write_scalars(step, {"train/loss": loss, "lr": lr})
    writer.write_summary({"best/top1": best_top1})
    writer.close()  # also finishes the W&B run

W&B mode (see ``wandb_mode``): the config's value wins, then ``WANDB_MODE``,
then 'online' if an API key is available (``WANDB_API_KEY`` or ``~/.netrc``),
else 'offline'. Offline runs land in ``workdir/wandb/offline-run-*`` and can be
uploaded later with ``wandb sync workdir/wandb/offline-run-*``.
"""

from __future__ import annotations

import json
import logging as _pylogging
import math
import netrc
import os
import pathlib
import secrets
import string
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np

from vision.files import write_text_atomically

if TYPE_CHECKING:  # wandb is imported lazily: it is slow and often unused.
  import wandb.sdk.wandb_run

__all__ = [
  "JsonlWriter",
  "WandbWriter",
  "create_metric_writer",
  "init_wandb",
  "wandb_mode",
]

_log = _pylogging.getLogger(__name__)

RUN_ID_FILE = "wandb_run_id.txt"
METRICS_FILE = "metrics.jsonl"
DEFAULT_PROJECT = "vision"
_DEFAULT_BASE_URL = "https://api.wandb.ai"
_MODES = {
  "online": "online",
  "offline": "offline",
  "disabled": "disabled",
  # Legacy spellings wandb still accepts.
  "run": "online",
  "dryrun": "offline",
}


# --- W&B mode ----------------------------------------------------------------


def _normalize_mode(mode: str, source: str) -> str:
  try:
    return _MODES[mode.strip().lower()]
  except KeyError:
    raise ValueError(
      f"W&B mode {mode!r} from {source} is not one of 'online', 'offline', 'disabled'"
    ) from None


def _netrc_path() -> pathlib.Path:
  """The .netrc file wandb would read: $NETRC, else ~/.netrc (or ~/_netrc)."""
  if env := os.environ.get("NETRC"):
    return pathlib.Path(env).expanduser()
  unix = pathlib.Path("~/.netrc").expanduser()
  windows = pathlib.Path("~/_netrc").expanduser()
  return windows if not unix.exists() and windows.exists() else unix


def _netrc_has_api_key(host: str) -> bool:
  try:
    creds = netrc.netrc(str(_netrc_path())).authenticators(host)
  except (OSError, netrc.NetrcParseError):
    return False
  return bool(creds and creds[2])


def _logged_in() -> bool:
  """True if wandb would find an API key (env var or .netrc) for the host."""
  if os.environ.get("WANDB_API_KEY"):
    return True
  base_url = os.environ.get("WANDB_BASE_URL") or _DEFAULT_BASE_URL
  host = urlsplit(base_url).netloc or urlsplit(_DEFAULT_BASE_URL).netloc
  return _netrc_has_api_key(host)


def wandb_mode(requested: str | None = None) -> str:
  """Returns 'online', 'offline' or 'disabled' for this run.

  ``requested`` (from the config) wins if given, else ``$WANDB_MODE``, else
  'online' when an API key is available (``$WANDB_API_KEY`` or a .netrc
  entry for the W&B host), else 'offline' so runs never block on a login.
  """
  if requested:
    return _normalize_mode(requested, "the config")
  if env := os.environ.get("WANDB_MODE"):
    return _normalize_mode(env, "$WANDB_MODE")
  return "online" if _logged_in() else "offline"


# --- W&B run -----------------------------------------------------------------


def _run_id(workdir: pathlib.Path) -> str:
  """The run id persisted in ``workdir``, created on first use."""
  path = workdir / RUN_ID_FILE
  if path.exists() and (run_id := path.read_text(encoding="utf-8").strip()):
    return run_id
  # Same shape as wandb's own ids: 8 characters of [0-9a-z].
  run_id = "".join(secrets.choice(string.digits + string.ascii_lowercase) for _ in range(8))
  write_text_atomically(path, run_id + "\n")
  return run_id


def init_wandb(
  config: dict,
  workdir: str | os.PathLike,
  *,
  project: str | None,
  entity: str | None,
  name: str | None,
  group: str | None = None,
  tags: Sequence[str] = (),
  mode: str | None = None,
) -> wandb.sdk.wandb_run.Run:
  """Starts, or resumes, the W&B run that belongs to ``workdir``.

  W&B's files go under ``workdir/wandb/``; the run id lives in
  ``workdir/wandb_run_id.txt`` so the same command in the same workdir
  resumes the same run. ``project``/``entity``/``name`` fall back to
  ``$WANDB_PROJECT``/``$WANDB_ENTITY``/``$WANDB_NAME``, then project to
  "vision" and name to the workdir's basename. ``mode`` goes through
  ``wandb_mode``. W&B's console banners and stdout capture are turned off.
  """
  import wandb

  workdir = pathlib.Path(workdir).resolve()
  workdir.mkdir(parents=True, exist_ok=True)
  resolved_mode = wandb_mode(mode)
  run = wandb.init(
    dir=workdir,
    id=_run_id(workdir),
    resume="allow",
    project=project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
    entity=entity or os.environ.get("WANDB_ENTITY") or None,
    name=name or os.environ.get("WANDB_NAME") or workdir.name,
    group=group,
    tags=list(tags) or None,
    config=dict(config),
    mode=resolved_mode,
    # One run per workdir: finish any run this process still has open.
    reinit="finish_previous",
    settings=wandb.Settings(silent=True, console="off"),
  )
  if resolved_mode != "disabled":
    _log.info(
      "W&B run %s (%s%s): %s",
      run.id,
      resolved_mode,
      ", resumed" if run.resumed else "",
      run.url if resolved_mode == "online" else run.dir,
    )
  return run


# --- Value conversion --------------------------------------------------------


def _to_python(value: Any) -> Any:
  """jax/numpy scalars and arrays to plain Python numbers (or lists)."""
  if value is None or type(value) in (str, bool, int, float):
    return value  # (np.float64 subclasses float: it goes through numpy.)
  array = np.asarray(value)
  return array.item() if array.size == 1 else array.tolist()


def _json_safe(value: Any) -> Any:
  """Replaces non-finite floats by the strings "NaN"/"Infinity"/"-Infinity"."""
  if isinstance(value, float) and not math.isfinite(value):
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
  if isinstance(value, list):
    return [_json_safe(v) for v in value]
  return value


# --- JSON lines --------------------------------------------------------------


class MetricWriter:
  """A metric sink; every method does nothing unless a writer overrides it.

  The method names are CLU's ``MetricWriter`` interface. CLU itself is not
  imported: its ``metric_writers`` package loads TensorFlow on import, which
  costs every command about 11 s on a 2-core machine.
  """

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    pass

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    pass

  def write_histograms(
    self, step: int, arrays: Mapping[str, Any], num_buckets: Mapping[str, int] | None = None
  ) -> None:
    pass

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    pass

  def write_summary(self, values: Mapping[str, Any]) -> None:
    pass

  def write_tables(self, step: int, tables: Mapping[str, tuple[Sequence[str], Sequence]]) -> None:
    """``{key: (columns, rows)}``: tables (per-class metrics, top losses) where the sink has them."""

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


class MultiWriter(MetricWriter):
  """Forwards every call to each of its writers."""

  def __init__(self, writers: Sequence[MetricWriter]):
    self._writers = list(writers)

  def write_scalars(self, step, scalars):
    for writer in self._writers:
      writer.write_scalars(step, scalars)

  def write_images(self, step, images):
    for writer in self._writers:
      writer.write_images(step, images)

  def write_histograms(self, step, arrays, num_buckets=None):
    for writer in self._writers:
      writer.write_histograms(step, arrays, num_buckets)

  def write_hparams(self, hparams):
    for writer in self._writers:
      writer.write_hparams(hparams)

  def write_summary(self, values):
    for writer in self._writers:
      writer.write_summary(values)

  def write_tables(self, step, tables):
    for writer in self._writers:
      writer.write_tables(step, tables)

  def flush(self):
    for writer in self._writers:
      writer.flush()

  def close(self):
    for writer in self._writers:
      writer.close()


def _parse_line(line: str) -> dict | None:
  """The JSON object on ``line``, or None if it is not a complete one."""
  if not line.endswith("\n"):
    return None  # A kill mid-write: the line never got its newline.
  try:
    obj = json.loads(line)
  except ValueError:
    return None
  return obj if isinstance(obj, dict) and isinstance(obj.get("step"), int) else None


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
  """The complete rows of ``workdir/metrics.jsonl``, in order; [] when it does not exist."""
  path = pathlib.Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  with open(path, encoding="utf-8") as file:
    return [row for row in map(_parse_line, file) if row is not None]


def _keep_line(line: str, resume_step: int | None) -> bool:
  obj = _parse_line(line)
  return obj is not None and (resume_step is None or obj["step"] <= resume_step)


def _trim_jsonl(path: pathlib.Path, resume_step: int | None) -> int:
  """Drops malformed lines and lines past ``resume_step``; returns # dropped.

  Rewrites atomically (temp file + os.replace), and only if something goes.
  """
  with open(path, encoding="utf-8", newline="\n") as f:
    lines = f.readlines()
  kept = [line for line in lines if _keep_line(line, resume_step)]
  if len(kept) != len(lines):
    write_text_atomically(path, "".join(kept))
  return len(lines) - len(kept)


class JsonlWriter(MetricWriter):
  """Keeps ``{"step": step, **scalars}`` as one JSON line per step.

  Values become plain Python numbers; NaN/Inf are written as the strings
  "NaN"/"Infinity"/"-Infinity" so every line stays valid JSON. Each line is
  flushed. A second write for the step of the last line (the test metrics
  after the final training step) is merged into that line. With
  ``resume_step``, an existing file first loses the lines with step >
  resume_step; malformed lines (a kill mid-write) are always dropped. Only
  scalars are written: the other MetricWriter methods are no-ops.
  """

  def __init__(self, path: str | os.PathLike, *, resume_step: int | None = None):
    self._path = pathlib.Path(path)
    self._path.parent.mkdir(parents=True, exist_ok=True)
    if self._path.exists():
      if dropped := _trim_jsonl(self._path, resume_step):
        _log.info(
          "%s: dropped %d line(s) after step %s or malformed", self._path, dropped, resume_step
        )
    if not self._path.exists():
      self._path.write_bytes(b"")
    self._file = open(self._path, "r+b")
    self._last_row, self._last_offset = self._read_last_row()
    self._file.seek(0, os.SEEK_END)

  def _read_last_row(self) -> tuple[dict | None, int]:
    content = self._file.read()
    if not content:
      return None, 0
    start = content.rstrip(b"\n").rfind(b"\n") + 1
    return _parse_line(content[start:].decode("utf-8")), start

  @property
  def path(self) -> pathlib.Path:
    return self._path

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    row = {"step": int(step)}
    row.update((k, _json_safe(_to_python(v))) for k, v in scalars.items())
    if self._last_row is not None and self._last_row.get("step") == row["step"]:
      row = {**self._last_row, **row}
      self._file.seek(self._last_offset)
      self._file.truncate()
    else:
      self._last_offset = self._file.tell()
    self._file.write((json.dumps(row, allow_nan=False) + "\n").encode("utf-8"))
    self._file.flush()
    self._last_row = row

  def flush(self):
    if not self._file.closed:
      self._file.flush()

  def close(self):
    self._file.close()


# --- W&B ---------------------------------------------------------------------


def _to_uint8_image(image: np.ndarray) -> np.ndarray:
  """HWC uint8 (HW for one channel); floats are taken to be in [0, 1]."""
  if image.dtype != np.uint8:
    image = np.round(np.clip(image.astype(np.float32), 0.0, 1.0) * 255.0)
    image = image.astype(np.uint8)
  return image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image


def _wandb_images(images: Any) -> Any:
  """One ``wandb.Image`` for an [H, W, C] array, a list for [N, H, W, C]."""
  import wandb

  array = np.asarray(images)
  if array.ndim == 4:
    return [wandb.Image(_to_uint8_image(a)) for a in array]
  return wandb.Image(_to_uint8_image(array))


class WandbWriter(MetricWriter):
  """Writes scalars, images, histograms and hparams to a W&B run.

  Steps below the last one W&B has (after an online resume: the steps the
  killed run already logged) are skipped instead of sent: W&B would drop
  them anyway, with one warning per call. ``close()`` finishes the run.
  """

  def __init__(self, run: wandb.sdk.wandb_run.Run):
    self._run = run
    self._min_step = int(getattr(run, "starting_step", 0) or 0)
    self._skipped = 0

  @property
  def run(self) -> wandb.sdk.wandb_run.Run:
    return self._run

  def _accept(self, step: int) -> bool:
    if step >= self._min_step:
      self._min_step = step
      return True
    if not self._skipped:
      _log.info("W&B already has step %d; skipping earlier steps (from %d)", self._min_step, step)
    self._skipped += 1
    return False

  def _log(self, step: int, values: dict) -> None:
    if values and self._accept(int(step)):
      self._run.log(values, step=int(step))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    self._log(step, {k: _to_python(v) for k, v in scalars.items()})

  def write_images(self, step: int, images: Mapping[str, Any]):
    self._log(step, {k: _wandb_images(v) for k, v in images.items()})

  def write_histograms(self, step, arrays, num_buckets=None):
    import wandb

    num_buckets = num_buckets or {}
    self._log(
      step,
      {
        k: wandb.Histogram(
          np_histogram=np.histogram(
            np.asarray(v, dtype=np.float64).ravel(), bins=num_buckets.get(k, 64)
          )
        )
        for k, v in arrays.items()
      },
    )

  def write_hparams(self, hparams: Mapping[str, Any]):
    self._run.config.update({k: _to_python(v) for k, v in hparams.items()}, allow_val_change=True)

  def write_tables(self, step: int, tables: Mapping[str, tuple[Sequence[str], Sequence]]) -> None:
    """Each ``(columns, rows)`` as a ``wandb.Table`` under its key."""
    import wandb

    self._log(step, {key: wandb.Table(columns=list(columns), allow_mixed_types=True,
                                      data=[[_to_python(v) for v in row] for row in rows])
                     for key, (columns, rows) in tables.items()})

  def write_summary(self, values: Mapping[str, Any]) -> None:
    """Sets ``run.summary[k] = v`` (final/best values shown in run tables)."""
    for k, v in values.items():
      self._run.summary[k] = _to_python(v)

  def flush(self):
    pass

  def close(self):
    if self._skipped:
      _log.info("Skipped %d W&B write(s) for steps W&B already had.", self._skipped)
    self._run.finish()


# --- Composition -------------------------------------------------------------


def create_metric_writer(
  workdir: str | os.PathLike,
  *,
  run: wandb.sdk.wandb_run.Run | None = None,
  resume_step: int | None = None,
  is_main_process: bool = True,
) -> MetricWriter:
  """The run's writer: ``workdir/metrics.jsonl`` plus W&B if ``run`` is given.

  On non-main processes the returned writer does nothing, so multi-host runs
  only write from process 0.
  """
  if not is_main_process:
    return MultiWriter([])
  writers: list[MetricWriter] = [
    JsonlWriter(pathlib.Path(workdir) / METRICS_FILE, resume_step=resume_step)
  ]
  if run is not None:
    writers.append(WandbWriter(run))
  return MultiWriter(writers)
