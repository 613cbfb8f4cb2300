"""Active-learning strategies: which pool images to label next, most informative first.

    scores = PoolScores(probs=probs, embeddings=features)        # from vision.active.scoring
    chosen, acquisition = select("margin", scores, count=500, seed=0)
    chosen[0]          # index into the pool of the image to label first

Each strategy turns the model's view of the unlabelled pool into an ordered
choice of `count` indices (the annotator's priority order) and one
acquisition score per chosen image (higher: more wanted):

* `random` — a seeded uniform sample (the baseline every other one must beat).
* `least_confidence`, `margin`, `entropy` — uncertainty sampling on the
  softmax (Settles 2009, §3.1): 1 − max p, −(p₁ − p₂), −Σ p log p.
* `bald` — the mutual information between the prediction and the weights,
  estimated with MC dropout: H[mean_t p_t] − mean_t H[p_t] (Gal, Islam &
  Ghahramani 2017, "Deep Bayesian Active Learning with Image Data").
* `coreset` — k-center greedy on penultimate-layer embeddings: each pick is the
  pool image farthest from every labelled or already-picked image (Sener &
  Savarese 2018, "Active Learning for CNNs: A Core-Set Approach").
* `badge` — gradient embeddings of the last layer under the predicted label,
  (p − onehot(ŷ)) ⊗ h, seeded by k-means++ so the batch is both uncertain and
  diverse (Ash et al. 2020, "Deep Batch Active Learning by Diverse, Uncertain
  Gradient Lower Bounds"); scikit-learn's `kmeans_plusplus` does the seeding.

What each strategy needs from the scoring pass is in `NEEDS`, so scoring
computes only that (embeddings, MC-dropout samples).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import sklearn.cluster

from vision.config import ConfigError


@dataclasses.dataclass(frozen=True)
class PoolScores:
  """The model's view of the pool: what the strategies select from.

  probs: float [N, C] softmax in eval mode. embeddings: float [N, D]
  penultimate-layer features (`model.features`), or None. mutual_information:
  float [N] BALD scores from MC dropout, or None. labelled_embeddings: float
  [L, D] features of the labelled set (core-set's initial centres), or None.
  """
  probs: np.ndarray
  embeddings: np.ndarray | None = None
  mutual_information: np.ndarray | None = None
  labelled_embeddings: np.ndarray | None = None


# What the scoring pass must compute for each strategy, beyond the probabilities.
EMBEDDINGS, MC_DROPOUT, LABELLED_EMBEDDINGS = "embeddings", "mc_dropout", "labelled_embeddings"


def least_confidence(probs: np.ndarray) -> np.ndarray:
  """1 − max_c p_c per row of `probs` [N, C]; higher is more uncertain."""
  return 1.0 - probs.max(axis=1)


def margin(probs: np.ndarray) -> np.ndarray:
  """−(p_first − p_second) per row; the smallest gap between the top two classes scores highest."""
  top_two = np.sort(probs, axis=1)[:, -2:]
  return top_two[:, 0] - top_two[:, 1]


def entropy(probs: np.ndarray) -> np.ndarray:
  """Shannon entropy in nats per row of `probs` [..., N, C] → [..., N]."""
  return -np.sum(probs * np.log(np.clip(probs, 1e-12, None)), axis=-1)


def mutual_information(mc_probs: np.ndarray) -> np.ndarray:
  """BALD's score from MC-dropout samples `mc_probs` [T, N, C]: H[mean p] − mean H[p], [N]."""
  return entropy(mc_probs.mean(axis=0)) - entropy(mc_probs).mean(axis=0)


def top_scoring(scores: np.ndarray, count: int) -> np.ndarray:
  """Indices of the `count` highest scores, highest first (ties: lower index first)."""
  return np.argsort(-scores, kind="stable")[:count]


def k_center_greedy(embeddings: np.ndarray, centres: np.ndarray | None, count: int, *,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Sener & Savarese's greedy core-set: `count` pool indices in pick order, and their distances.

  embeddings: float [N, D] of the pool; centres: float [L, D] of the labelled
  set (None or empty: the first pick is a seeded random pool point). Each pick is
  the pool point whose distance to its nearest centre is largest; it then becomes
  a centre. Returns (indices [count], that distance at pick time [count]).
  """
  pool = np.asarray(embeddings, np.float32)
  pool_sq = np.einsum("nd,nd->n", pool, pool)
  nearest = np.full(len(pool), np.inf, np.float32)

  def add_centres(points: np.ndarray) -> None:
    for start in range(0, len(points), 1024):  # [N, 1024] distance blocks bound the memory
      block = np.asarray(points[start:start + 1024], np.float32)
      squared = pool_sq[:, None] - 2 * pool @ block.T + np.einsum("md,md->m", block, block)
      np.minimum(nearest, np.maximum(squared, 0).min(axis=1), out=nearest)

  chosen, distances = [], []
  if centres is not None and len(centres):
    add_centres(centres)
  else:
    first = int(np.random.default_rng(seed).integers(len(pool)))
    chosen.append(first)
    distances.append(np.inf)
    add_centres(pool[first:first + 1])
  while len(chosen) < min(count, len(pool)):
    pick = int(np.argmax(nearest))
    chosen.append(pick)
    distances.append(float(np.sqrt(nearest[pick])))
    add_centres(pool[pick:pick + 1])
  return np.asarray(chosen, np.int64), np.asarray(distances, np.float64)


def gradient_embeddings(probs: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
  """BADGE's embeddings: the cross-entropy gradient w.r.t. the head's kernel under ŷ = argmax p.

  probs [N, C], embeddings [N, D] → [N, C·D], the outer product (p − onehot(ŷ)) ⊗ h.
  """
  residual = probs.astype(np.float32).copy()
  residual[np.arange(len(probs)), probs.argmax(axis=1)] -= 1.0
  return (residual[:, :, None] * embeddings.astype(np.float32)[:, None, :]).reshape(len(probs), -1)


def badge(probs: np.ndarray, embeddings: np.ndarray, count: int, *,
          seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """k-means++ seeding (D² sampling) on gradient embeddings: `count` indices in pick order.

  Returns (indices, gradient-embedding norms of the picks). Plain k-means++ as in
  Ash et al. (`n_local_trials=1`); should it pick fewer than `count` distinct
  points (all remaining embeddings identical), the largest norms fill the rest.
  """
  # float64: scikit-learn upcasts float32 distances chunk by chunk, 5-18x slower here.
  vectors = gradient_embeddings(probs, embeddings).astype(np.float64)
  count = min(count, len(vectors))
  _, picked = sklearn.cluster.kmeans_plusplus(vectors, n_clusters=count, random_state=seed,
                                              n_local_trials=1)
  picked = list(dict.fromkeys(int(i) for i in picked))
  norms = np.linalg.norm(vectors, axis=1)
  if len(picked) < count:
    taken = set(picked)
    picked += [int(i) for i in top_scoring(norms, len(vectors)) if int(i) not in taken][
        :count - len(picked)]
  chosen = np.asarray(picked, np.int64)
  return chosen, norms[chosen].astype(np.float64)


Selector = Callable[[PoolScores, int, int], tuple[np.ndarray, np.ndarray]]


def _by_score(score: Callable[[np.ndarray], np.ndarray]) -> Selector:
  def select_(scores: PoolScores, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    del seed
    values = score(scores.probs)
    chosen = top_scoring(values, count)
    return chosen, values[chosen].astype(np.float64)
  return select_


def _random(scores: PoolScores, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  chosen = np.random.default_rng(seed).permutation(len(scores.probs))[:count]
  return chosen.astype(np.int64), np.zeros(len(chosen))


def _bald(scores: PoolScores, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  del seed
  chosen = top_scoring(scores.mutual_information, count)
  return chosen, scores.mutual_information[chosen].astype(np.float64)


def _coreset(scores: PoolScores, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  return k_center_greedy(scores.embeddings, scores.labelled_embeddings, count, seed=seed)


def _badge(scores: PoolScores, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  return badge(scores.probs, scores.embeddings, count, seed=seed)


STRATEGIES: dict[str, Selector] = {
    "random": _random,
    "least_confidence": _by_score(least_confidence),
    "margin": _by_score(margin),
    "entropy": _by_score(entropy),
    "bald": _bald,
    "coreset": _coreset,
    "badge": _badge,
}
NEEDS: dict[str, frozenset[str]] = {
    "bald": frozenset({MC_DROPOUT}),
    "coreset": frozenset({EMBEDDINGS, LABELLED_EMBEDDINGS}),
    "badge": frozenset({EMBEDDINGS}),
}


def check_strategy(name: str) -> str:
  """`name` if it is a strategy, else a ConfigError listing them."""
  if name not in STRATEGIES:
    raise ConfigError(f"--strategy={name!r} is unknown; expected one of {', '.join(STRATEGIES)}")
  return name


def select(name: str, scores: PoolScores, count: int, *,
           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """`count` pool indices chosen by strategy `name`, most wanted first, and their scores.

  Fewer when the pool is smaller than `count`.
  """
  chosen, acquisition = STRATEGIES[check_strategy(name)](scores, min(count, len(scores.probs)),
                                                         seed)
  return np.asarray(chosen, np.int64), np.asarray(acquisition, np.float64)
