"""Distillation: the objective against hand-computed values, its config checks, the two
variants, and the shipped comparison sweep (configs/distill_fashion_mnist.py:compare)."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import pathlib

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import REPO, run_module
import wandb_offline
from vision import comparison
from vision import config as config_lib
from vision import parallel
from vision import sweep as sweep_lib
from vision.compress import channels
from vision.config import ConfigError
from vision.models.small_cnn import SmallCNN
from vision.train import distill, losses


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


def test_the_hard_label_term_is_the_runs_own_loss_and_keeps_its_metrics():
  # Under mixup the run's loss reads the mixed soft targets; distillation must not replace them.
  logits = jnp.array([[2.0, 0.0], [0.0, 1.0]])
  batch = {"label": jnp.array([0, 1]), "targets": jnp.array([[0.7, 0.3], [0.4, 0.6]]),
           distill.TEACHER_PROBS: jnp.array([[0.9, 0.1], [0.2, 0.8]])}

  def label_loss(logits, batch, model=None):
    del model
    value = optax.softmax_cross_entropy(logits, batch["targets"]).mean()
    return value, {"train/label_loss": value}

  value, metrics = distill.distillation_loss(2.0, 0.25, label_loss)(logits, batch)
  kl = distill.kl_divergence(logits, batch[distill.TEACHER_PROBS], 2.0)
  soft = float(label_loss(logits, batch)[0])
  assert float(value) == pytest.approx(0.75 * float(kl) + 0.25 * soft, rel=1e-6)
  assert float(metrics["train/label_loss"]) == pytest.approx(soft)
  assert {"train/kl", "train/agreement", "train/teacher_accuracy"} <= set(metrics)


def _teacher(mesh) -> distill.Distiller:
  model = SmallCNN(10, 1, (4,), hidden=8, image_size=28, rngs=nnx.Rngs(0))
  model.eval()
  graphdef, state = nnx.split(model)
  return distill.Distiller([graphdef], [parallel.replicate(state, mesh)], temperature=2.0,
                           hard_label_weight=0.5, mesh=mesh)


def test_variant_alone_trains_on_the_runs_own_objective_and_distilled_on_the_teacher(monkeypatch):
  mesh = parallel.make_mesh()
  teacher = _teacher(mesh)
  monkeypatch.setattr(distill.Distiller, "create", classmethod(lambda cls, *args: teacher))
  config = config_lib.defaults()
  config.distill.teachers = ("runs/teacher",)
  own_loss, own_transform = losses.classification_loss(), lambda batch, rng: batch

  config.distill.variant = "alone"
  distiller, loss, transform = distill.setup(config, None, mesh, own_loss, own_transform)
  assert distiller is teacher and loss is own_loss and transform is own_transform

  config.distill.variant = "distilled"
  distiller, loss, transform = distill.setup(config, None, mesh, own_loss, own_transform)
  batch = {"image": jnp.ones((2, 28, 28, 1)), "label": jnp.array([0, 1])}
  taught = transform(batch, jax.random.key(0))
  expected = teacher.teacher_probs(batch["image"], temperature=2.0)
  np.testing.assert_allclose(taught[distill.TEACHER_PROBS], expected, rtol=1e-6)
  value, metrics = loss(jnp.zeros((2, 10)), taught)
  assert "train/kl" in metrics and np.isfinite(float(value))

  config.distill.teachers = ()
  assert distill.setup(config, None, mesh, own_loss, None) == (None, own_loss, None)


def test_bad_variant_is_a_one_line_error():
  config = config_lib.defaults()
  config.distill.variant = "baseline"
  with pytest.raises(ConfigError, match="'distill.variant' is 'baseline'; expected one of "
                                        "distilled, alone"):
    config_lib.validate(config, check_environment=False)


# ------------------------------------------------------------------ the shipped comparison

CONFIG = REPO / "configs/distill_fashion_mnist.py"


def _shipped_config(arg: str):
  spec = importlib.util.spec_from_file_location("distill_fashion_mnist", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return config_lib.validate(module.get_config(arg), check_environment=False)


def test_compare_is_a_grid_of_variant_by_seed_at_one_budget():
  spec = sweep_lib.load_sweep(CONFIG, "compare,teacher=/t")
  assert spec.name == "distill_fashion_mnist_compare" and spec.method == "grid"
  assert spec.grid() == [{"distill.variant": v, "seed": s}
                         for v in ("alone", "distilled") for s in (0, 1, 2)]
  assert spec.metric == "test/accuracy" and spec.baseline == {"distill.variant": "alone"}
  assert sweep_lib.load_sweep(CONFIG, "compare,smoke").name.endswith("_smoke")
  distilled, alone = _shipped_config("compare,teacher=/t"), _shipped_config("alone,teacher=/t")
  assert distilled.distill.teachers == alone.distill.teachers == ("/t",)
  assert (distilled.distill.variant, alone.distill.variant) == ("distilled", "alone")
  # Equal budget: the same data, model, optimiser and steps for both arms.
  for group in ("model", "optim"):
    assert distilled[group].to_dict() == alone[group].to_dict()
  for key in ("epochs", "num_steps", "batch_size"):
    assert distilled.train[key] == alone.train[key]
  assert distilled.data.max_train_examples == alone.data.max_train_examples


def test_the_students_size_is_the_documented_26722_parameters():
  # By hand: conv 1→8 (72) + BatchNorm scale/bias (16), conv 8→16 (1,152) + (32), two 2×2
  # pools leave 7×7×16 = 784 features → hidden 32 (25,120), head 32 → 10 (330).
  student = SmallCNN(10, 1, (8, 16), hidden=32, image_size=28, rngs=nnx.Rngs(0))
  assert channels.parameter_count(student) == 72 + 16 + 1152 + 32 + 784 * 32 + 32 + 330 == 26722


def test_recipe_searches_tune_each_arm_on_validation_at_the_comparison_budget():
  alone = sweep_lib.load_sweep(CONFIG, "search=alone,teacher=/t")
  distilled = sweep_lib.load_sweep(CONFIG, "search=distilled,teacher=/t")
  assert alone.metric == distilled.metric == "val/accuracy"  # never chosen on test
  assert all(p["distill.variant"] == "alone" for p in alone.grid()) and len(alone.grid()) == 4
  assert {(p["distill.temperature"], p["distill.hard_label_weight"])
          for p in distilled.grid()} == {(t, w) for t in (1.0, 2.0, 4.0) for w in (0.0, 0.5)}
  # The searches' chosen values are the comparison's defaults (T=4, no label term, no
  # label smoothing or mixup) and every trial has the comparison's data and steps.
  config = _shipped_config("teacher=/t")
  assert (config.distill.temperature, config.distill.hard_label_weight) == (4.0, 0.0)
  assert (config.train.label_smoothing, config.data.mixup_alpha) == (0.0, 0.0)
  assert config.data.max_train_examples == 10_000 and config.train.epochs == 40.0
  assert _shipped_config("smoke,teacher=/t").data.max_train_examples == 1024
  with pytest.raises(ConfigError, match="search=alone or search=distilled"):
    sweep_lib.load_sweep(CONFIG, "search=teacher")


@pytest.mark.slow
def test_compare_sweep_runs_both_variants_over_seeds_at_smoke_size(tmp_path):
  teacher = tmp_path / "teacher"
  run_module("experiments.train", "--config=configs/fashion_mnist.py:smoke",
             f"--workdir={teacher}", "--config.train.num_steps=4", "--config.wandb.mode=disabled")
  sweep = tmp_path / "compare"
  result = run_module(
      "experiments.sweep", f"--config=configs/distill_fashion_mnist.py:compare,smoke,teacher={teacher}",
      f"--workdir={sweep}", "--parallel=2",
      extra_env={"WANDB_MODE": "offline", "WANDB_SILENT": "true",
                 "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config")})
  assert "6 complete, 0 failed of 6 trials" in result.stdout, result.stdout
  assert "distill.variant=distilled vs alone on test/accuracy, paired by seed" in result.stdout

  with open(sweep / sweep_lib.RESULTS_CSV, newline="") as file:
    rows = list(csv.DictReader(file))
  assert {"distill.variant", "seed", "test/accuracy", "test/agreement", "val/agreement",
          "test/teacher_accuracy"} <= set(rows[0])
  assert sorted((r["distill.variant"], r["seed"]) for r in rows) == [
      (v, s) for v in ("alone", "distilled") for s in "012"]
  teacher_test = {r["test/teacher_accuracy"] for r in rows}
  assert len(teacher_test) == 1  # one teacher, scored on the same test images by every trial

  summary = json.loads((sweep / comparison.COMPARISON_JSON).read_text())["variants"]["distilled"]
  by_arm = {(r["distill.variant"], int(r["seed"])): float(r["test/accuracy"]) for r in rows}
  assert [p["difference"] for p in summary["pairs"]] == pytest.approx(
      [by_arm["distilled", s] - by_arm["alone", s] for s in (0, 1, 2)])

  for row in rows:
    workdir = pathlib.Path(row["workdir"])
    config = json.loads((workdir / "config.json").read_text())
    assert (config["distill"]["variant"], str(config["seed"])) == (row["distill.variant"],
                                                                   row["seed"])
    logged = {k for line in (workdir / "metrics.jsonl").read_text().splitlines()
              for k in json.loads(line)}
    # Only the distilled arm learns from the teacher; both are measured against it.
    assert ("train/kl" in logged) == (row["distill.variant"] == "distilled")
    assert {"val/agreement", "test/agreement"} <= logged
    groups = {record.run.run_group
              for path in wandb_offline.find_run_files(workdir)
              for record in wandb_offline.read_records(path)
              if record.WhichOneof("record_type") == "run"}
    assert groups == {"distill_fashion_mnist_compare_smoke"}
