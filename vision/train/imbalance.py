"""Class imbalance: class weights from counts, focal loss, the objective a config asks for.

    weights = class_weights(counts)                   # N / (C * count_c), "balanced"
    loss_fn = make_loss(config.train, counts)         # CE / weighted CE / focal
    metric = best_metric(config.train, counts)        # 'val/macro_f1' when the data are imbalanced

Config keys (vision/config.py): `train.loss` ('cross_entropy', 'focal'),
`train.focal_gamma`, `train.class_weights` ('none', 'balanced') and
`train.imbalance_threshold` (largest/smallest class ratio from which the best
checkpoint is chosen by validation macro-F1 instead of accuracy); the
class-balanced sampler is `data.sampler='balanced'` (vision/data/sampling.py).
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vision.train import losses

log = logging.getLogger("vision")


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
  return np.bincount(np.asarray(labels, np.int64), minlength=num_classes)[:num_classes]


def class_weights(counts: np.ndarray) -> np.ndarray:
  """sklearn's 'balanced' weights, N / (C * count), over the classes present; absent ones get 0."""
  counts = np.asarray(counts, np.float64)
  present = counts > 0
  weights = np.zeros_like(counts)
  weights[present] = counts.sum() / (present.sum() * counts[present])
  return weights.astype(np.float32)


def imbalance_ratio(counts: np.ndarray) -> float:
  present = np.asarray(counts)[np.asarray(counts) > 0]
  return float(present.max() / present.min()) if len(present) else 1.0


def _targets(logits: jax.Array, labels: jax.Array | None, targets: jax.Array | None,
             label_smoothing: float) -> jax.Array:
  if targets is None:
    targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  return optax.smooth_labels(targets, label_smoothing) if label_smoothing else targets


def _weighted_mean(per_example: jax.Array, weights: jax.Array | None) -> jax.Array:
  if weights is None:
    return per_example.mean()
  return (per_example * weights).sum() / jnp.maximum(weights.sum(), 1e-12)


def focal_loss(logits: jax.Array, labels: jax.Array | None = None, *, gamma: float = 2.0,
               targets: jax.Array | None = None, label_smoothing: float = 0.0,
               weights: jax.Array | None = None) -> jax.Array:
  """Softmax focal loss (Lin et al. 2017): sum_c -t_c (1 - p_c)^gamma log p_c, batch-averaged.

  `targets` (soft labels, e.g. from mixup) replace `labels`; `weights` are per-example (a
  class weight, the alpha of the paper) and make the mean a weighted one.
  """
  targets = _targets(logits, labels, targets, label_smoothing)
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32))
  per_example = -(targets * (1.0 - jnp.exp(log_p)) ** gamma * log_p).sum(-1)
  return _weighted_mean(per_example, weights)


def make_loss(train_config, counts: np.ndarray | None) -> losses.LossFn:
  """The train step's objective from `config.train` and the training split's class counts.

  Soft `batch['targets']` (mixup/cutmix) are used when present, else one-hot labels; a
  class weight of a soft target is the target-weighted mean of the class weights.
  """
  smoothing, gamma, focal = train_config.label_smoothing, train_config.focal_gamma, (
      train_config.loss == "focal")
  per_class = None
  if train_config.class_weights == "balanced":
    # A host constant: indexing a device array with batch-sharded labels fails under the mesh.
    per_class = class_weights(counts)
    log.info("class weights: %s", np.round(per_class, 3).tolist())
  if not focal and per_class is None:
    plain = losses.classification_loss(smoothing)

  def loss(logits: jax.Array, batch: dict[str, jax.Array], model=None) -> jax.Array:
    del model
    if not focal and per_class is None and "targets" not in batch:
      return plain(logits, batch)
    soft = batch.get("targets")
    targets = _targets(logits, batch["label"], soft, smoothing)
    weights = None
    if per_class is not None:
      # A one-hot (or soft) target times the weight vector: an elementwise product that keeps
      # the batch sharding, where a gather by label would not.
      hard = jax.nn.one_hot(batch["label"], logits.shape[-1], dtype=jnp.float32)
      weights = (hard if soft is None else soft) @ per_class
    if focal:
      return focal_loss(logits, targets=targets, gamma=gamma, weights=weights)
    per_example = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
    return _weighted_mean(per_example, weights)
  return loss


def best_metric(train_config, counts: np.ndarray | None) -> str:
  """`train.best_metric`, switched to val/macro_f1 when imbalanced and left at val/accuracy."""
  threshold = train_config.imbalance_threshold
  if (train_config.best_metric != "val/accuracy" or threshold is None or counts is None
      or imbalance_ratio(counts) < threshold):
    return train_config.best_metric
  log.info("training classes are imbalanced (ratio %.1f >= train.imbalance_threshold %.1f): "
           "the best checkpoint is chosen by val/macro_f1", imbalance_ratio(counts), threshold)
  return "val/macro_f1"
