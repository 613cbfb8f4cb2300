"""The prediction log: every served prediction in SQLite, written off the request path.

    log = PredictionLog("serving.db")
    log.record(Prediction(id, time.time(), "v1", top1=7, label="Sneaker", confidence=0.93,
                          embedding=compact_embedding(e)[0]))
    log.feedback(id, true_index=7)
    log.close()                       # drains the queue
    rows = read_predictions("serving.db", version="v1")

Table `predictions`: id TEXT PRIMARY KEY, time REAL (Unix seconds), version TEXT,
top1 INTEGER, label TEXT, confidence REAL, embedding BLOB (float16 bytes, at most
64 values), true_label INTEGER (NULL until POST /v1/feedback). A background thread
owns the connection and commits in batches, so a request never waits for the disk.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import queue
import sqlite3
import threading

import numpy as np

_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
  id TEXT PRIMARY KEY, time REAL NOT NULL, version TEXT NOT NULL, top1 INTEGER NOT NULL,
  label TEXT NOT NULL, confidence REAL NOT NULL, embedding BLOB NOT NULL, true_label INTEGER)
"""
_INDEX = "CREATE INDEX IF NOT EXISTS predictions_version_time ON predictions (version, time)"

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Prediction:
  id: str
  time: float
  version: str
  top1: int
  label: str
  confidence: float
  embedding: np.ndarray  # float16 [D]


class PredictionLog:
  """Queues rows for a writer thread that commits every `batch` rows or `interval` seconds."""

  def __init__(self, path: str | pathlib.Path, *, batch: int = 256, interval: float = 0.2):
    self.path = pathlib.Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(self.path) as connection:  # fail at start-up, not in the thread
      connection.execute("PRAGMA journal_mode=WAL")
      connection.execute(_SCHEMA)
      connection.execute(_INDEX)
    self._batch, self._interval = batch, interval
    self._queue: queue.Queue = queue.Queue()
    self.dropped = 0
    self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
    self._thread.start()

  def record(self, prediction: Prediction) -> None:
    self._queue.put(("insert", (
        prediction.id, prediction.time, prediction.version, prediction.top1, prediction.label,
        float(prediction.confidence), np.asarray(prediction.embedding, np.float16).tobytes())))

  def feedback(self, prediction_id: str, true_index: int) -> None:
    self._queue.put(("feedback", (int(true_index), prediction_id)))

  def flush(self, timeout: float = 10) -> None:
    """Waits until everything queued so far is committed."""
    done = threading.Event()
    self._queue.put(("flush", done))
    done.wait(timeout)

  @property
  def alive(self) -> bool:
    return self._thread.is_alive()

  def close(self) -> None:
    self._queue.put(None)
    self._thread.join(timeout=30)

  def _run(self) -> None:
    connection = sqlite3.connect(self.path)
    stop = False
    while not stop:
      items = [self._queue.get()]
      try:
        while len(items) < self._batch:
          items.append(self._queue.get(timeout=self._interval))
      except queue.Empty:
        pass
      flushed = []
      try:
        with connection:
          for item in items:
            if item is None:
              stop = True
            elif item[0] == "insert":
              connection.execute("INSERT OR REPLACE INTO predictions VALUES (?,?,?,?,?,?,?,NULL)",
                                 item[1])
            elif item[0] == "feedback":
              connection.execute("UPDATE predictions SET true_label = ? WHERE id = ?", item[1])
            else:
              flushed.append(item[1])
      except sqlite3.Error as error:  # keep serving; say what was lost
        self.dropped += len(items)
        log.error("prediction log %s: %s (%d rows lost)", self.path, error, len(items))
      for event in flushed:
        event.set()
    connection.close()


@dataclasses.dataclass(frozen=True)
class LoggedTraffic:
  """Rows of the log as arrays."""
  ids: list[str]
  time: np.ndarray
  version: list[str]
  top1: np.ndarray
  confidence: np.ndarray
  embedding: np.ndarray  # float32 [N, D]
  true_label: np.ndarray  # -1 where unknown


def read_predictions(path: str | pathlib.Path, *, version: str | None = None,
                     since: float | None = None, limit: int | None = None) -> LoggedTraffic:
  """The logged predictions (optionally one version, after a time, the latest `limit`)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"prediction log {path} does not exist (experiments.serve --log=...)")
  query = "SELECT id, time, version, top1, confidence, embedding, true_label FROM predictions"
  where, args = [], []
  if version is not None:
    where.append("version = ?")
    args.append(version)
  if since is not None:
    where.append("time >= ?")
    args.append(since)
  if where:
    query += " WHERE " + " AND ".join(where)
  query += " ORDER BY time DESC"
  if limit:
    query += f" LIMIT {int(limit)}"
  try:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
      rows = connection.execute(query, args).fetchall()
  except sqlite3.DatabaseError as error:
    raise FileNotFoundError(f"{path} is not a prediction log ({error})") from None
  rows.reverse()
  dims = len(rows[0][5]) // 2 if rows else 0
  return LoggedTraffic(
      ids=[r[0] for r in rows], time=np.array([r[1] for r in rows], np.float64),
      version=[r[2] for r in rows], top1=np.array([r[3] for r in rows], np.int64),
      confidence=np.array([r[4] for r in rows], np.float64),
      embedding=np.stack([np.frombuffer(r[5], np.float16) for r in rows]).astype(np.float32)
      if rows else np.zeros((0, dims), np.float32),
      true_label=np.array([-1 if r[6] is None else r[6] for r in rows], np.int64))
