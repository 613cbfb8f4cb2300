"""Imbalance: the balanced sampler, class weights, focal loss, best-checkpoint choice."""

from __future__ import annotations

import math

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vision import config as config_lib
from vision.config import ConfigError
from vision.data import pipeline
from vision.data.sources import ArraySource
from vision.train import imbalance


def _skewed(counts=(40, 8, 4, 2)) -> ArraySource:
  labels = np.concatenate([np.full(c, i) for i, c in enumerate(counts)]).astype(np.int64)
  images = np.zeros((len(labels), 4, 4, 1), np.uint8)
  images[:, 0, 0, 0] = np.arange(len(labels))  # which record, for the resume check
  return ArraySource(images, labels)


def _data_config(**overrides) -> ml_collections.ConfigDict:
  config = config_lib.defaults()
  config.data.sampler = "balanced"
  config.data.update(overrides)
  return config.data


def test_balanced_sampler_gives_balanced_batches_and_resumes_exactly():
  records = _skewed()
  spec = pipeline.ImageSpec(4, 1, (0.0,), (1.0,))
  iterator = pipeline.train_iterator(records, _data_config(), spec, batch_size=8, seed=3)
  seen = []
  for _ in range(6):
    batch = next(iterator)
    assert np.bincount(batch["label"], minlength=4).tolist() == [2, 2, 2, 2]
    seen.append(np.round(batch["image"][:, 0, 0, 0] * 255))  # normalised: x / 255
  # Every member of the rare class appears, not one example repeated.
  rare = np.concatenate(seen)[np.concatenate(seen) >= 52]
  assert set(rare.tolist()) == {52.0, 53.0}
  state = iterator.get_state()
  expected = [next(iterator)["image"] for _ in range(3)]
  resumed = pipeline.train_iterator(records, _data_config(), spec, batch_size=8, seed=3)
  resumed.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(resumed)["image"], want)
  other_seed = pipeline.train_iterator(records, _data_config(), spec, batch_size=8, seed=4)
  assert not np.array_equal(next(other_seed)["image"], seen[0])


def test_class_weights_from_counts():
  weights = imbalance.class_weights(np.array([40, 8, 0, 2]))
  # N / (C_present * count): 50 / (3 * count)
  np.testing.assert_allclose(weights, [50 / 120, 50 / 24, 0.0, 50 / 6], rtol=1e-6)
  assert imbalance.imbalance_ratio(np.array([40, 8, 0, 2])) == 20.0


def test_focal_loss_matches_a_hand_computed_value():
  logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
  labels = jnp.array([0, 2])
  # p = e^2 / (e^2 + 2) = 0.786986; FL = (1 - p)^2 * -ln p = 0.045375 * 0.239545
  p0 = math.exp(2) / (math.exp(2) + 2)
  p1 = 1 / (2 + math.e)
  fl0, fl1 = (1 - p0) ** 2 * -math.log(p0), (1 - p1) ** 2 * -math.log(p1)
  assert fl0 == pytest.approx(0.0108693, rel=1e-4)
  assert float(imbalance.focal_loss(logits, labels, gamma=2.0)) == pytest.approx(
      (fl0 + fl1) / 2, rel=1e-5)
  weights = jnp.array([1.0, 3.0])
  assert float(imbalance.focal_loss(logits, labels, gamma=2.0, weights=weights)) == pytest.approx(
      (fl0 + 3 * fl1) / 4, rel=1e-5)
  # gamma = 0 is cross-entropy.
  assert float(imbalance.focal_loss(logits, labels, gamma=0.0)) == pytest.approx(
      (-math.log(p0) - math.log(p1)) / 2, rel=1e-5)


def test_make_loss_weights_the_rare_class():
  train = config_lib.defaults().train
  train.class_weights = "balanced"
  counts = np.array([30, 10])
  loss = imbalance.make_loss(train, counts)
  logits = jnp.array([[0.0, 0.0], [0.0, 0.0]])
  batch = {"label": jnp.array([0, 1])}
  assert float(loss(logits, batch)) == pytest.approx(math.log(2), rel=1e-5)  # equal losses
  skewed_logits = jnp.array([[0.0, 0.0], [3.0, 0.0]])  # the rare example is wrong
  unweighted = imbalance.make_loss(config_lib.defaults().train, counts)
  assert float(loss(skewed_logits, batch)) > float(unweighted(skewed_logits, batch))
  train.loss = "focal"
  assert float(imbalance.make_loss(train, counts)(skewed_logits, batch)) > 0


def test_best_metric_switches_to_macro_f1_when_imbalanced():
  train = config_lib.defaults().train
  assert imbalance.best_metric(train, np.array([10, 10])) == "val/accuracy"
  assert imbalance.best_metric(train, np.array([30, 10])) == "val/macro_f1"
  train.best_metric = "val/loss"
  assert imbalance.best_metric(train, np.array([30, 10])) == "val/loss"


@pytest.mark.parametrize("key,value,message", [
    ("data.sampler", "weighted", "data.sampler"),
    ("train.loss", "hinge", "train.loss"),
    ("train.class_weights", "inverse", "train.class_weights"),
    ("train.focal_gamma", -1.0, "train.focal_gamma"),
    ("train.imbalance_threshold", 0.5, "train.imbalance_threshold"),
])
def test_imbalance_keys_are_validated(key, value, message):
  config = config_lib.defaults()
  group, name = key.split(".")
  config[group][name] = value
  with pytest.raises(ConfigError, match=message):
    config_lib.validate(config, check_environment=False)
