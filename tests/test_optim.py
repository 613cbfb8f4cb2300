"""Optimisers, schedules, weight-decay masks and the loss."""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vision import config as config_lib
from vision.models import ModelOptions, create_model
from vision.train import losses, optim


def _optim(**overrides):
  config = config_lib.defaults().optim
  config.update(overrides)
  return config


def test_warmup_then_cosine():
  schedule = optim.make_schedule(_optim(learning_rate=0.4, warmup_epochs=1.0, schedule="cosine"),
                                 total_steps=110, steps_per_epoch=10)
  assert float(schedule(0)) == 0.0
  assert float(schedule(5)) == pytest.approx(0.2)
  assert float(schedule(10)) == pytest.approx(0.4)
  assert float(schedule(60)) == pytest.approx(0.2, rel=1e-5)   # half-way through the cosine
  assert float(schedule(110)) == pytest.approx(0.0, abs=1e-7)


def test_step_and_linear_schedules():
  step = optim.make_schedule(_optim(learning_rate=1.0, schedule="step", step_boundaries=(0.5, 0.75),
                                    step_factor=0.1), total_steps=100, steps_per_epoch=10)
  assert [float(step(s)) for s in (0, 49, 51, 76)] == pytest.approx([1.0, 1.0, 0.1, 0.01])
  linear = optim.make_schedule(_optim(learning_rate=1.0, schedule="linear"),
                               total_steps=100, steps_per_epoch=10)
  assert float(linear(25)) == pytest.approx(0.75)


def test_weight_decay_skips_biases_and_norms():
  model = create_model("resnet18", ModelOptions(num_classes=3, in_channels=1, image_size=16),
                       rngs=nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  mask = optim.decay_mask(params)
  flat = {"/".join(map(str, path)): value for path, value in jax.tree_util.tree_leaves_with_path(mask)}
  assert flat and all(v for k, v in flat.items() if k.endswith("kernel"))
  assert not any(v for k, v in flat.items() if k.endswith(("bias", "scale")))


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_masked_decay_leaves_zero_gradient_biases_alone(name):
  params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
  tx = optim.make_optimizer(_optim(name=name, weight_decay=0.1, learning_rate=0.1, momentum=0.0),
                            optax.constant_schedule(0.1))
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  assert np.all(np.asarray(updates["bias"]) == 0)
  assert np.all(np.asarray(updates["kernel"]) < 0)


def test_clipping_bounds_the_update():
  tx = optim.make_optimizer(_optim(grad_clip_norm=1.0, weight_decay=0.0, momentum=0.0),
                            optax.constant_schedule(1.0))
  params = {"w": jnp.zeros((4,))}
  updates, _ = tx.update({"w": jnp.full((4,), 100.0)}, tx.init(params), params)
  assert float(optax.tree.norm(updates)) == pytest.approx(1.0, rel=1e-5)


def test_label_smoothing_matches_the_formula():
  logits = jnp.array([[2.0, 0.0, -1.0]])
  log_p = jax.nn.log_softmax(logits)[0]
  targets = np.array([0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3])
  expected = -float((targets * log_p).sum())
  got = float(losses.cross_entropy(logits, jnp.array([0]), label_smoothing=0.1))
  assert got == pytest.approx(expected, rel=1e-6)
