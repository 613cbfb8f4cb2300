"""Optax optimisers and learning-rate schedules built from `config.optim`.

    schedule = make_schedule(config.optim, total_steps=10_000, steps_per_epoch=390)
    tx = make_optimizer(config.optim, schedule)

Weight decay applies to kernels only: biases and normalisation parameters
(every parameter with fewer than two dimensions) are masked off.
"""

from __future__ import annotations

import jax
import optax


def make_schedule(optim_config, *, total_steps: int, steps_per_epoch: int) -> optax.Schedule:
  """Linear warm-up (optional) followed by cosine, step, linear or constant decay."""
  peak = optim_config.learning_rate
  warmup = min(int(round(optim_config.warmup_epochs * steps_per_epoch)), total_steps - 1)
  decay_steps = max(1, total_steps - warmup)
  kind = optim_config.schedule
  if kind == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps)
  elif kind == "linear":
    decay = optax.linear_schedule(peak, 0.0, decay_steps)
  elif kind == "step":
    boundaries = {int(fraction * decay_steps): optim_config.step_factor
                  for fraction in optim_config.step_boundaries}
    decay = optax.piecewise_constant_schedule(peak, boundaries)
  else:
    decay = optax.constant_schedule(peak)
  if warmup <= 0:
    return decay
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak, warmup), decay], boundaries=[warmup])


def decay_mask(params):
  """True for the parameters weight decay applies to (kernels, not biases or norms)."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(optim_config, schedule: optax.Schedule) -> optax.GradientTransformation:
  parts = []
  if optim_config.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(optim_config.grad_clip_norm))
  if optim_config.name == "adamw":
    parts.append(optax.adamw(schedule, b1=optim_config.b1, b2=optim_config.b2,
                             weight_decay=optim_config.weight_decay, mask=decay_mask))
  else:
    if optim_config.weight_decay:
      # Coupled L2, as in the classic SGD recipes (torch.optim.SGD's weight_decay).
      parts.append(optax.add_decayed_weights(optim_config.weight_decay, mask=decay_mask))
    parts.append(optax.sgd(schedule, momentum=optim_config.momentum or None,
                           nesterov=optim_config.nesterov))
  return optax.chain(*parts)
