"""Calibration (ECE, temperature scaling), the error analysis in the report, and TTA views."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision import tasks
from vision.data.sources import ImageFileSource, SubsetSource
from vision.evaluate import calibration, interpret, tta
from vision.tasks.classification import Classification
from vision.tasks.multi_label import MultiLabel
from vision.tasks.multi_task import MultiTask

# Six predictions over classes a, b, c. Top-1 confidence, bin (of 15, 0-based), correct?
#   0.90 → 13 yes | 0.92 → 13 no | 0.50 → 7 yes | 0.45 → 6 no | 0.78 → 11 yes | 0.34 → 5 no
# ECE = (2·|0.5 - 0.91| + |1 - 0.5| + |0 - 0.45| + |1 - 0.78| + |0 - 0.34|) / 6 = 2.33 / 6
PROBS = np.array([[0.90, 0.05, 0.05], [0.92, 0.04, 0.04], [0.50, 0.30, 0.20],
                  [0.20, 0.45, 0.35], [0.11, 0.11, 0.78], [0.34, 0.33, 0.33]])
LABELS = np.array([0, 1, 0, 2, 2, 1])
HAND_ECE = 2.33 / 6


def test_ece_matches_the_hand_computed_case_and_netcal():
  from netcal.metrics import ECE  # pylint: disable=import-outside-toplevel  # imports torch

  assert calibration.expected_calibration_error(LABELS, PROBS) == pytest.approx(HAND_ECE)
  assert ECE(bins=15).measure(PROBS, LABELS) == pytest.approx(HAND_ECE)
  bins = calibration.reliability_bins(LABELS, PROBS)
  assert [i for i, n in enumerate(bins["count"]) if n] == [5, 6, 7, 11, 13]
  assert bins["count"][13] == 2 and bins["accuracy"][13] == 0.5
  assert bins["confidence"][13] == pytest.approx(0.91) and bins["accuracy"][0] is None
  # Random predictions: the same number as netcal's 15 equal-width bins.
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3000, 7)) * 2.5
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  labels = rng.integers(0, 7, 3000)
  assert calibration.expected_calibration_error(labels, probs) == pytest.approx(
      ECE(bins=15).measure(probs, labels), abs=1e-9)


def test_temperature_scaling_recovers_the_temperature_that_made_the_labels():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(4000, 5)) * 3.0
  scaled = np.exp(logits / 2.5)
  labels = np.array([rng.choice(5, p=p / p.sum()) for p in scaled])
  temperature = calibration.fit_temperature(logits, labels)
  assert temperature == pytest.approx(2.5, rel=0.08)
  nll = calibration.negative_log_likelihood
  assert nll(logits, labels, temperature) < nll(logits, labels, 1.0)
  # Over-confident logits get T > 1 and a lower ECE; the predicted class never changes.
  raw = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  fitted = Classification(("a", "b", "c", "d", "e")).calibrate(labels, logits)
  assert fitted.temperature == pytest.approx(temperature)
  calibrated = fitted.probabilities(logits.astype(np.float32))
  assert (calibrated.argmax(1) == raw.argmax(1)).all()
  assert (calibration.expected_calibration_error(labels, calibrated)
          < calibration.expected_calibration_error(labels, raw) / 2)
  with pytest.raises(ValueError, match="labels must be in"):
    calibration.fit_temperature(logits, labels + 5)


def test_the_temperature_travels_in_the_task_json_and_scales_jax_and_numpy_alike():
  task = Classification(("a", "b", "c"), temperature=2.0)
  again = tasks.from_json(json.loads(json.dumps(task.to_json())))
  assert again == task and again.temperature == 2.0
  assert tasks.from_json(None).temperature == 1.0  # an old card without a task
  logits = np.array([[2.0, 0.0, -2.0]], np.float32)
  expected = np.exp(logits / 2) / np.exp(logits / 2).sum()
  np.testing.assert_allclose(task.probabilities(logits), expected, rtol=1e-6)
  np.testing.assert_allclose(jax.jit(task.probabilities)(jnp.asarray(logits)), expected,
                             rtol=1e-6)
  assert task.uncalibrated().temperature == 1.0
  # Exported outputs: logits and the probabilities at the temperature.
  outputs = task.outputs(logits)
  assert list(outputs) == list(task.output_names) == ["logits", "probabilities"]
  np.testing.assert_allclose(outputs["probabilities"], expected, rtol=1e-6)
  # Multi-task: each classification head keeps its own temperature; multi-label has none.
  multi = MultiTask.from_heads([("cls", task, 1.0), ("tags", MultiLabel(("p", "q")), 1.0)])
  assert tasks.from_json(json.loads(json.dumps(multi.to_json()))) == multi
  both = np.array([[2.0, 0.0, -2.0, 1.0, -1.0]], np.float32)
  np.testing.assert_allclose(multi.probabilities(both)[:, :3], expected, rtol=1e-6)
  raw = multi.uncalibrated()
  assert raw.heads[0].task.temperature == 1.0 and raw.heads[1].task == multi.heads[1].task


def test_the_report_adds_calibration_per_class_accuracy_most_confused_and_top_losses():
  task = Classification(("a", "b", "c"), temperature=0.5)
  raw = PROBS ** 0.5 / (PROBS ** 0.5).sum(1, keepdims=True)  # flatter, as if at T = 1
  report = task.report(LABELS, PROBS, raw)
  assert report["per_class_accuracy"] == {"a": 1.0, "b": 0.0, "c": 0.5}
  fit = report["calibration"]
  assert fit["ece_calibrated"] == pytest.approx(HAND_ECE) and fit["temperature"] == 0.5
  assert fit["ece"] == pytest.approx(calibration.expected_calibration_error(LABELS, raw))
  assert set(fit["bins"]) == {"raw", "calibrated"} and len(fit["bins"]["raw"]["count"]) == 15
  assert report["most_confused"] == [{"true": "b", "predicted": "a", "count": 2},
                                     {"true": "c", "predicted": "b", "count": 1}]
  losses = report["top_losses"]
  assert [e["position"] for e in losses] == [1, 5, 3, 2, 4, 0]
  assert losses[0] == {"position": 1, "true": "b", "predicted": "a", "probability": 0.92,
                       "true_probability": 0.04, "loss": pytest.approx(-np.log(0.04))}
  json.dumps(report, allow_nan=False)
  scalars = task.scalars(report, "test")
  assert scalars["test/ece"] == fit["ece"] and scalars["test/ece_calibrated"] == fit[
      "ece_calibrated"]
  assert "ECE:" in task.summary(report)


def test_top_losses_name_the_split_index_and_the_file(tmp_path):
  files = ImageFileSource([str(tmp_path / f"{i}.png") for i in range(10)], np.arange(10) % 2)
  evaluated = SubsetSource(files, np.array([7, 2, 9]))  # data.max_eval_examples of the split
  described = interpret.describe_examples(
      [{"position": 2, "true": "x", "predicted": "y", "probability": 0.9, "loss": 3.0}],
      evaluated, files)
  assert described[0]["index"] == 9 and described[0]["file"] == str(tmp_path / "9.png")


def test_tta_views_flip_and_shift_the_image_and_average_in_one_call():
  images = jnp.arange(2 * 32 * 32 * 1, dtype=jnp.float32).reshape(2, 32, 32, 1)
  fill = np.array([-5.0], np.float32)
  assert tta.tta_views(images, "none", fill).shape == (1, 2, 32, 32, 1)
  flipped = tta.tta_views(images, "flip", fill)
  np.testing.assert_array_equal(flipped[1], images[:, :, ::-1])
  views = tta.tta_views(images, "flip_crops", fill)
  shift = tta.crop_shift(32)
  assert views.shape == (10, 2, 32, 32, 1) and shift == 2
  # The first crop of the padded image is the image moved down and right by `shift`.
  np.testing.assert_array_equal(views[2][:, shift:, shift:], images[:, :-shift, :-shift])
  assert (views[2][:, :shift] == -5.0).all() and (views[5][:, -shift:, -shift:] == -5.0).all()

  def forward(x):  # a "model" whose logits are the mean of the left and right halves
    return jnp.stack([x[:, :, :16].mean((1, 2, 3)), x[:, :, 16:].mean((1, 2, 3))], axis=-1)

  mean = jax.jit(lambda x: tta.mean_over_views(forward, lambda l: {"p": l}, x, "flip", fill))
  averaged = mean(images)["p"]
  expected = (forward(images) + forward(images[:, :, ::-1])) / 2
  np.testing.assert_allclose(averaged, expected, rtol=1e-6)
  with pytest.raises(Exception, match="--tta=mirror is not"):
    tta.check_mode("mirror")
