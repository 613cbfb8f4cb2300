"""Weighted A/B split of requests between model versions, seeded for reproducible tests.

    router = Router(["v1", "v2"], [0.9, 0.1], seed=0)
    router.pick()   # "v1" about 90% of the time
"""

from __future__ import annotations

import threading
from typing import Sequence

import numpy as np


class Router:
  """Picks a version per request with probability proportional to its weight."""

  def __init__(self, versions: Sequence[str], weights: Sequence[float] | None = None,
               seed: int | None = None):
    weights = [1.0] * len(versions) if weights is None else list(weights)
    if len(weights) != len(versions):
      raise ValueError(f"--traffic has {len(weights)} weights for {len(versions)} --model "
                       "directories; give one weight per model")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
      raise ValueError(f"--traffic weights must be >= 0 with a positive sum, got {weights}")
    self.versions = list(versions)
    self.weights = np.asarray(weights, np.float64) / sum(weights)
    self._rng = np.random.default_rng(seed)
    self._lock = threading.Lock()

  def pick(self) -> str:
    with self._lock:
      return self.versions[int(self._rng.choice(len(self.versions), p=self.weights))]
