"""Per-image latency (batch 1, median) of any predict function: JAX or an exported model.

    median_latency_ms(model.predict, image)                          # one runtime
    interleaved_latency_ms({"jax": f, "onnx": g}, image)             # several, timed in turns

The comparison table of every runtime is `vision.export.compare`.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import Any, Callable

import jax
import numpy as np

DEFAULT_REPEATS = 100
_WARMUP = 5


def median_latency_ms(predict: Callable[[np.ndarray], Any], image: np.ndarray, *,
                      repeats: int = DEFAULT_REPEATS) -> float:
  """Median wall time of `predict(image)` in milliseconds, after a few warm-up calls."""
  for _ in range(_WARMUP):
    jax.block_until_ready(predict(image))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(predict(image))
    times.append(time.perf_counter() - start)
  return 1000 * statistics.median(times)


def interleaved_latency_ms(predicts: dict[str, Callable[[np.ndarray], Any]], image: np.ndarray,
                           *, repeats: int = DEFAULT_REPEATS) -> dict[str, float]:
  """Median ms per call of each predictor, timed in turns so that load drift hits all alike."""
  for predict in predicts.values():
    for _ in range(_WARMUP):
      jax.block_until_ready(predict(image))
  times = {name: [] for name in predicts}
  for _ in range(repeats):
    for name, predict in predicts.items():
      start = time.perf_counter()
      jax.block_until_ready(predict(image))
      times[name].append(time.perf_counter() - start)
  return {name: 1000 * statistics.median(values) for name, values in times.items()}
