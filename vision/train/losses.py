"""Classification losses on float32 logits.

    loss = cross_entropy(logits, labels, label_smoothing=0.1)   # mean over the batch
    loss_fn = classification_loss(label_smoothing=0.1)         # LossFn for the train step
    value = loss_fn(logits, {"image": images, "label": labels})

A `LossFn` maps (logits, batch, model) to the scalar the train step minimises;
the batch is the sharded dict the step received (after any batch transform), so
a loss may read extra keys such as soft targets or a teacher's logits, and the
model is there for losses with parameters of their own (multi-task uncertainty
weights); most ignore it, and it defaults to None.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

LossFn = Callable[..., jax.Array]  # (logits, batch, model=None) -> scalar or (scalar, metrics)


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


def classification_loss(label_smoothing: float = 0.0) -> LossFn:
  """Cross-entropy against `batch['label']`, the default objective."""
  def loss(logits: jax.Array, batch: dict[str, jax.Array], model=None) -> jax.Array:
    del model
    return cross_entropy(logits, batch["label"], label_smoothing=label_smoothing)
  return loss
