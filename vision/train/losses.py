"""Classification losses on float32 logits.

    loss = cross_entropy(logits, labels, label_smoothing=0.1)   # mean over the batch
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array, *, label_smoothing: float = 0.0,
                  weights: jax.Array | None = None) -> jax.Array:
  """Softmax cross-entropy against integer labels, averaged with optional weights."""
  targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  per_example = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
  if weights is None:
    return per_example.mean()
  return (per_example * weights).sum() / jnp.maximum(weights.sum(), 1.0)
