"""A class-balanced sampling order for the grain pipeline, seeded and resumable.

    order = BalancedOrder(labels, seed=0)
    order[0:4]     # one record of each class (for 4 classes), in a random class order

Position p of the infinite order is a pure function of (labels, seed, p): each
epoch of `len(labels)` positions is cut into rounds of one example per class
(class order shuffled per round; small classes cycle through fresh
permutations, i.e. they are oversampled), so a batch whose size is a multiple
of the number of classes is exactly balanced, and resuming at a position needs
no state beyond that position (grain's iterator checkpoint).
"""

from __future__ import annotations

import functools

import numpy as np

_EPOCHS = 1 << 20  # "forever": grain needs a length; training stops long before


class BalancedOrder:
  """Record indices in class-balanced order, as a random-access sequence for grain."""

  def __init__(self, labels: np.ndarray, seed: int):
    self._labels = np.asarray(labels, np.int64)
    self._seed = seed
    self._classes = np.unique(self._labels)
    self._members = [np.nonzero(self._labels == c)[0] for c in self._classes]
    self._epoch_length = len(self._labels)

  def __len__(self) -> int:
    return self._epoch_length * _EPOCHS

  def __getitem__(self, position):
    if isinstance(position, slice):
      return [self[i] for i in range(*position.indices(len(self)))]
    epoch, offset = divmod(int(position), self._epoch_length)
    return int(self._epoch(epoch)[offset])

  @functools.lru_cache(maxsize=2)
  def _epoch(self, epoch: int) -> np.ndarray:
    rng = np.random.default_rng([self._seed, epoch])
    num_classes = len(self._classes)
    rounds = -(-self._epoch_length // num_classes)
    per_class = np.stack([_draw(members, rounds, rng) for members in self._members])
    class_order = rng.permuted(np.tile(np.arange(num_classes), (rounds, 1)), axis=1)
    order = per_class[class_order, np.arange(rounds)[:, None]]
    return order.reshape(-1)[:self._epoch_length]


def _draw(members: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
  """`count` members: whole shuffled passes, so every member appears before any repeats."""
  passes = -(-count // len(members))
  return np.concatenate([rng.permutation(members) for _ in range(passes)])[:count]
