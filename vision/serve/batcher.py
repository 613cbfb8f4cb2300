"""Dynamic micro-batching: concurrent requests share one model call.

    batcher = MicroBatcher(model.predict, max_batch_size=32, max_wait_ms=5)
    logits, embedding = await asyncio.wrap_future(batcher.submit(image))
    batcher.close()

One worker thread per model takes the first waiting image, then keeps collecting
until `max_batch_size` images are waiting or `max_wait_ms` has passed since the
first, runs the model once on the stack and hands each caller its own row.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import queue
import threading
import time
from typing import Callable

import numpy as np

Predict = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass
class BatchStats:
  batches: int = 0
  images: int = 0
  max_batch_size: int = 0

  def as_dict(self) -> dict:
    return {"batches": self.batches, "images": self.images,
            "max_batch_size": self.max_batch_size,
            "mean_batch_size": self.images / self.batches if self.batches else 0.0}


class MicroBatcher:
  """Collects single images into batches for `predict` on a worker thread."""

  def __init__(self, predict: Predict, *, max_batch_size: int = 32, max_wait_ms: float = 5.0,
               on_batch: Callable[[int, float], None] | None = None, name: str = "batcher"):
    if max_batch_size < 1:
      raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
    self._predict = predict
    self._max_batch_size = max_batch_size
    self._max_wait = max_wait_ms / 1000
    self._on_batch = on_batch
    self._queue: queue.Queue = queue.Queue()
    self._closed = threading.Event()
    self.stats = BatchStats()
    self._thread = threading.Thread(target=self._run, name=name, daemon=True)
    self._thread.start()

  def submit(self, image: np.ndarray) -> concurrent.futures.Future:
    """A future of (logits [K], embedding [D]) for one uint8 HWC image."""
    future: concurrent.futures.Future = concurrent.futures.Future()
    if self._closed.is_set():
      future.set_exception(RuntimeError("the model is shutting down"))
    else:
      self._queue.put((image, future))
    return future

  @property
  def alive(self) -> bool:
    return self._thread.is_alive() and not self._closed.is_set()

  def close(self) -> None:
    self._closed.set()
    self._queue.put(None)
    self._thread.join(timeout=10)

  def _collect(self, first) -> list:
    batch = [first]
    deadline = time.monotonic() + self._max_wait
    while len(batch) < self._max_batch_size:
      remaining = deadline - time.monotonic()
      try:
        item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
      except queue.Empty:
        break
      if item is None:
        self._queue.put(None)  # seen again by _run, which then stops
        break
      batch.append(item)
    return batch

  def _run(self) -> None:
    while True:
      first = self._queue.get()
      if first is None:
        break
      batch = self._collect(first)
      images = np.stack([image for image, _ in batch])
      start = time.perf_counter()
      try:
        logits, embedding = self._predict(images)
      except Exception as error:  # pylint: disable=broad-except
        for _, future in batch:
          future.set_exception(error)
        continue
      seconds = time.perf_counter() - start
      self.stats.batches += 1
      self.stats.images += len(batch)
      self.stats.max_batch_size = max(self.stats.max_batch_size, len(batch))
      if self._on_batch:
        self._on_batch(len(batch), seconds)
      for row, (_, future) in enumerate(batch):
        future.set_result((logits[row], embedding[row]))
    while not self._queue.empty():  # fail what arrived after close()
      item = self._queue.get_nowait()
      if item is not None:
        item[1].set_exception(RuntimeError("the model is shutting down"))
