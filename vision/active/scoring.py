"""Scoring an unlabelled pool with a trained model: one jitted, batched, sharded pass.

    model, card = load_model("runs/round-3")
    scores = score_pool(model, card, pool_records, strategy="badge", batch_size=512)
    scores.probs.shape, scores.embeddings.shape          # [N, C], [N, D]

The pass computes what the strategy needs (`strategies.NEEDS`) and nothing more:
softmax probabilities always, penultimate-layer embeddings (`model.features`,
the model contract of `vision.models`) for core-set and BADGE, and for BALD
`mc_samples` forward passes with dropout on and BatchNorm on its running
statistics, reduced on device to the mutual information. Batches are padded to
one size, so each variant compiles once per model.
"""

from __future__ import annotations

import itertools
from typing import Callable

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from vision import parallel
from vision.checkpoint import ModelCard
from vision.data.sources import RecordSource
from vision.evaluate.evaluate import card_spec, eval_batch_size
from vision.evaluate.inference import predict_split
from vision.active import strategies


def _entropy(probs: jax.Array) -> jax.Array:
  return -jnp.sum(probs * jnp.log(jnp.clip(probs, 1e-12, None)), axis=-1)


def _head_outputs(model: nnx.Module, images: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(probabilities [B, C], penultimate features [B, D]); in eval mode dropout is the identity,
  so `head(features(x))` is the model's own output."""
  features = model.features(images)
  logits = model.head(features).astype(jnp.float32)
  return jax.nn.softmax(logits), features.astype(jnp.float32)


def make_scorer(model: nnx.Module, mesh: jax.sharding.Mesh, *, embeddings: bool,
                mc_samples: int = 0, seed: int = 0) -> Callable[[dict], dict[str, jax.Array]]:
  """A jitted `batch -> {"probs", ["embeddings"], ["mutual_information"]}` for `model` (eval mode).

  With `mc_samples` > 0 it also runs that many dropout-on passes (different keys
  per batch and sample, derived from `seed`) and returns BALD's mutual information.
  """
  model.eval()
  graphdef, state = nnx.split(model)
  mc_model = nnx.clone(model)
  mc_model.set_attributes(nnx.Dropout, deterministic=False, raise_if_not_found=False)
  mc_graphdef, _ = nnx.split(mc_model)
  state = parallel.replicate(state, mesh)

  @jax.jit
  def score(state, images, key):
    probs, features = _head_outputs(nnx.merge(graphdef, state), images)
    outputs = {"probs": probs}
    if embeddings:
      outputs["embeddings"] = features
    if mc_samples:
      def sample(sample_key):
        sampled = nnx.merge(mc_graphdef, state, copy=True)
        nnx.reseed(sampled, default=sample_key)
        return jax.nn.softmax(sampled(images).astype(jnp.float32))
      samples = jax.lax.map(sample, jax.random.split(key, mc_samples))  # [T, B, C]
      outputs["mutual_information"] = (_entropy(samples.mean(axis=0))
                                       - _entropy(samples).mean(axis=0))
    return outputs

  base_key = parallel.replicate(jax.random.key(seed), mesh)
  batches = itertools.count()
  return lambda batch: score(state, batch["image"], jax.random.fold_in(base_key, next(batches)))


def score_pool(model: nnx.Module, card: ModelCard, pool: RecordSource, *, strategy: str,
               labelled: RecordSource | None = None, batch_size: int = 512,
               mc_samples: int = 10, seed: int = 0,
               mesh: jax.sharding.Mesh | None = None) -> tuple[strategies.PoolScores, np.ndarray]:
  """The pool's `PoolScores` for `strategy`, and the pool's labels as the records carry them.

  `labelled` (core-set's initial centres) is scored for embeddings too. The
  labels are the records' own (-1 marks an unreadable image of an unlabelled pool).
  """
  needs = strategies.NEEDS.get(strategy, frozenset())
  mesh = mesh or parallel.make_mesh()
  batch_size = eval_batch_size(batch_size)
  spec = card_spec(card)
  scorer = make_scorer(model, mesh, embeddings=strategies.EMBEDDINGS in needs,
                       mc_samples=mc_samples if strategies.MC_DROPOUT in needs else 0, seed=seed)
  labels, outputs = predict_split(scorer, pool, spec, batch_size=batch_size, mesh=mesh)
  labelled_embeddings = None
  if strategies.LABELLED_EMBEDDINGS in needs and labelled is not None and len(labelled):
    labelled_embeddings = predict_split(scorer, labelled, spec, batch_size=batch_size,
                                        mesh=mesh)[1]["embeddings"]
  scores = strategies.PoolScores(
      probs=outputs["probs"], embeddings=outputs.get("embeddings"),
      mutual_information=outputs.get("mutual_information"),
      labelled_embeddings=labelled_embeddings)
  return scores, labels
