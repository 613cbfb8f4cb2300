"""The distillation objective against hand-computed values, and its config checks."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from vision import config as config_lib
from vision.config import ConfigError
from vision.train import distill


def test_kl_term_matches_a_hand_computed_value():
  # One example, two classes, T = 2: student logits (2, 0) → softmax((1, 0)).
  student = jnp.array([[2.0, 0.0]])
  teacher = jnp.array([[0.25, 0.75]])
  q1 = math.e / (math.e + 1)
  by_hand = 0.25 * math.log(0.25 / q1) + 0.75 * math.log(0.75 / (1 - q1))
  value = distill.kl_divergence(student, teacher, temperature=2.0)
  assert float(value) == pytest.approx(4 * by_hand, rel=1e-6)  # T² · KL


def test_kl_is_zero_when_the_student_matches_and_is_averaged_over_the_batch():
  logits = jnp.array([[1.0, -1.0, 0.5], [0.0, 2.0, 0.0]])
  teacher = np.exp(np.asarray(logits) / 3) / np.exp(np.asarray(logits) / 3).sum(-1, keepdims=True)
  kl = distill.kl_divergence(logits, jnp.asarray(teacher), 3.0)
  assert float(kl) == pytest.approx(0, abs=1e-6)
  one = distill.kl_divergence(logits[:1], jnp.array([[1.0, 0.0, 0.0]]), 1.0)
  two = distill.kl_divergence(logits, jnp.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]), 1.0)
  other = distill.kl_divergence(logits[1:], jnp.array([[1.0, 0.0, 0.0]]), 1.0)
  assert float(two) == pytest.approx((float(one) + float(other)) / 2, rel=1e-6)


def test_distillation_loss_mixes_kl_and_cross_entropy_and_reports_agreement():
  logits = jnp.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
  batch = {"label": jnp.array([0, 1, 1]),
           distill.TEACHER_PROBS: jnp.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]])}
  value, metrics = distill.distillation_loss(2.0, hard_label_weight=0.25)(logits, batch)
  kl = distill.kl_divergence(logits, batch[distill.TEACHER_PROBS], 2.0)
  log_probs = np.log(np.exp(logits) / np.exp(logits).sum(-1, keepdims=True))
  ce = -np.mean(log_probs[np.arange(3), [0, 1, 1]])
  assert float(value) == pytest.approx(0.75 * float(kl) + 0.25 * ce, rel=1e-5)
  assert float(metrics["train/kl"]) == pytest.approx(float(kl))
  assert float(metrics["train/teacher_accuracy"]) == pytest.approx(1.0)  # teacher: 0, 1, 1
  assert float(metrics["train/agreement"]) == pytest.approx(2 / 3)      # student: 0, 1, 0


@pytest.mark.parametrize("key, value, message", [
    ("temperature", 0.0, "'distill.temperature' must be > 0"),
    ("hard_label_weight", 1.5, "'distill.hard_label_weight' must be in [0, 1]"),
])
def test_bad_distill_settings_are_one_line_errors(key, value, message):
  config = config_lib.defaults()
  config.distill[key] = value
  with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
    config_lib.validate(config, check_environment=False)
