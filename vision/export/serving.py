"""The function every export format holds: uint8 images in; logits, probabilities, embedding out.

    serving = serving_function(model, card, task)
    outputs = serving.apply(serving.weights, images_uint8)   # {"logits": [B, K], "probabilities":
                                                             #  [B, K], "embedding": [B, D]}
    serving.output_names                                     # ("logits", "probabilities", "embedding")

The preprocessing the model was trained with (scale to [0, 1], then the model
card's mean and std) is part of the function, so a deployed model takes raw
uint8 NHWC pixels at the model's size and channel count; the batch dimension is
free. `embedding` is the model contract's `model.features(x)` (what drift
monitoring compares) and `logits` is `model.head` applied to it, so one forward
pass gives both. The task (vision.tasks) names the outputs: `logits` and
`probabilities` (the task's: softmax at the temperature fitted on validation,
or sigmoids) for classification and multi-label models; `logits_HEAD` and
`probabilities_HEAD` per head for multi-task models.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from vision.checkpoint import ModelCard

INPUT_NAME = "images"
EMBEDDING = "embedding"
# What an export.json without "outputs" had (exports from before the task seam).
OUTPUT_NAMES = ("logits", EMBEDDING)


@dataclasses.dataclass(frozen=True)
class ServingFunction:
  """`apply(weights, images)`: a pure function of a flat list of weight arrays and the images."""
  apply: Callable[[list, jax.Array], dict[str, jax.Array]]
  weights: list[np.ndarray]
  input_shape: tuple[int, int, int]   # H, W, C (the batch dimension is free)
  output_names: tuple[str, ...] = OUTPUT_NAMES  # the task's logits outputs, then "embedding"

  def bound(self) -> Callable[[jax.Array], dict[str, jax.Array]]:
    """`images -> outputs` with the weights closed over (constants of the graph)."""
    return lambda images: self.apply(self.weights, images)


def preprocess(images: jax.Array, mean: np.ndarray, std: np.ndarray) -> jax.Array:
  """uint8 NHWC → float32, in the order `vision.data.pipeline.Normalise` computes it."""
  return (images.astype(jnp.float32) / 255.0 - mean) / std


def serving_function(model: nnx.Module, card: ModelCard, task) -> ServingFunction:
  """The model (in eval mode) and its card's preprocessing as one pure function.

  `task.outputs(logits)` splits the logits into the exported outputs (one per head).
  """
  model.eval()
  # RNG streams (dropout's) are unused in eval mode; they stay out of the exported weights.
  graphdef, rng_state, weight_state = nnx.split(model, nnx.RngState, ...)
  leaves, treedef = jax.tree.flatten(weight_state)
  mean = np.asarray(card.mean, np.float32)
  std = np.asarray(card.std, np.float32)

  def apply(weights: list[Any], images: jax.Array) -> dict[str, jax.Array]:
    module = nnx.merge(graphdef, rng_state, jax.tree.unflatten(treedef, list(weights)))
    embedding = module.features(preprocess(images, mean, std))
    logits = module.head(embedding).astype(jnp.float32)
    return {**task.outputs(logits), EMBEDDING: embedding.astype(jnp.float32)}

  return ServingFunction(apply, [np.asarray(leaf) for leaf in leaves],
                         (card.image_size, card.image_size, card.channels),
                         (*task.output_names, EMBEDDING))
