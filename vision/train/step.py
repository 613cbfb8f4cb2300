"""The pure train and eval steps, compiled by `jax.jit` with explicit shardings.

    steps = Steps.create(model, optimizer, mesh, task=task, loss=task.loss(config.train, records))
    state = steps.state                                 # replicated pytree
    state, metrics = steps.train(state, batch, rng)     # batch sharded over 'data'
    probs = steps.predict(state, batch)                 # task.probabilities of the logits

The step is the same for every task (vision.tasks): the objective is pluggable,
`loss(logits, batch, model)` returns the scalar to minimise (or `(scalar,
{name: metric})`, which logs the metrics too; `model` is there for losses with
parameters of their own, such as learned multi-task weights), the task adds its
`train_metrics` and turns logits into `probabilities`, and an optional
`batch_transform(batch, rng)` rewrites the sharded batch on device before the
forward pass (mixup, a teacher's predictions, ...).

`TrainState` is a plain pytree of nnx states (model and optimizer); the
graph definitions stay static inside the compiled functions. The training
state is donated, so each step reuses its buffers. A step whose loss or
gradients are not finite leaves the state unchanged and reports
`nonfinite == 1`, so the loop can stop with the last good parameters intact.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

from flax import nnx
import jax
import jax.numpy as jnp
import optax

from vision import parallel, tasks
from vision.checkpoint import TrainState
from vision.train import losses

Batch = dict[str, jax.Array]
BatchTransform = Callable[[Batch, jax.Array], Batch]


def _train_step(model_def, optimizer_def, task, loss: losses.LossFn,
                batch_transform: Optional[BatchTransform], state: TrainState, batch: Batch,
                rng: jax.Array) -> tuple[TrainState, dict]:
  model = nnx.merge(model_def, state.model)
  optimizer = nnx.merge(optimizer_def, state.optimizer)
  # Dropout and batch-transform keys are functions of (seed, step): resumption needs no RNG state.
  step_rng = jax.random.fold_in(rng, optimizer.step[...])
  nnx.reseed(model, default=step_rng)
  if batch_transform is not None:
    batch = batch_transform(batch, jax.random.fold_in(step_rng, 1))

  def loss_fn(model):
    logits = model(batch["image"])
    value = loss(logits, batch, model)
    # A loss may also return metrics of its own: (value, {"train/kl": ...}).
    value, extra = value if isinstance(value, tuple) else (value, {})
    return value, (logits, extra)

  (loss_value, (logits, extra)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
  grad_norm = optax.tree.norm(grads)
  optimizer.update(model, grads)
  finite = jnp.isfinite(loss_value) & jnp.isfinite(grad_norm)
  new_state = TrainState(nnx.state(model), nnx.state(optimizer))
  new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
  metrics = {
      "train/loss": loss_value,
      **task.train_metrics(logits, batch),
      "train/grad_norm": grad_norm,
      "nonfinite": 1 - finite.astype(jnp.int32),
      **extra,
  }
  return new_state, metrics


def _predict(model_def, task, state: TrainState, batch: dict[str, jax.Array]) -> jax.Array:
  return task.probabilities(nnx.merge(model_def, state.model)(batch["image"]))


@dataclasses.dataclass
class Steps:
  """The compiled steps for one model/optimizer pair on one mesh."""
  state: TrainState
  train: Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]
  predict: Callable[[TrainState, dict], jax.Array]

  @classmethod
  def create(cls, model: nnx.Module, optimizer: nnx.Optimizer, mesh: jax.sharding.Mesh, *,
             task: Any = None, loss: losses.LossFn = losses.classification_loss(),
             batch_transform: Optional[BatchTransform] = None,
             configure_train: Optional[Callable[[nnx.Module], None]] = None) -> "Steps":
    """`task` (vision.tasks; default: plain classification over the head's outputs) gives the
    train metrics and the probabilities; `configure_train(model)` adjusts the training graph
    after `model.train()` (transfer learning runs frozen BatchNorm layers on their running
    statistics)."""
    task = task or tasks.plain_classification(model.head.out_features)
    model.train()
    if configure_train is not None:
      configure_train(model)
    train_def, model_state = nnx.split(model)
    model.eval()
    eval_def, _ = nnx.split(model)
    model.train()
    optimizer_def, optimizer_state = nnx.split(optimizer)
    replicated, sharded = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    state = parallel.replicate(TrainState(model_state, optimizer_state), mesh)
    train = jax.jit(
        lambda state, batch, rng: _train_step(
            train_def, optimizer_def, task, loss, batch_transform, state, batch, rng),
        in_shardings=(replicated, sharded, replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=0)
    predict = jax.jit(lambda state, batch: _predict(eval_def, task, state, batch),
                      in_shardings=(replicated, sharded), out_shardings=sharded)
    return cls(state, train, predict)
