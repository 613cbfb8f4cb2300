"""Multi-label: BCE, per-class thresholds tuned on validation, training from a CSV source."""

from __future__ import annotations

import json
import math

import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from conftest import tiny_config
from vision import tasks
from vision.data import prepare
from vision.evaluate.evaluate import evaluate_workdir
from vision.evaluate.predict import predict_files
from vision.tasks import multi_label as multilabel
from vision.train import loop

QUADRANTS = ("top_left", "top_right", "bottom_left", "bottom_right")


def test_bce_matches_a_hand_computed_value():
  logits = jnp.array([[0.0, 2.0]])
  labels = jnp.array([[1.0, 0.0]])
  # -ln sigmoid(0) = ln 2;  -ln(1 - sigmoid(2)) = ln(1 + e^2)
  expected = (math.log(2) + math.log(1 + math.e ** 2)) / 2
  value = multilabel.bce_loss()(logits, {"labels": labels, "label": jnp.array([0])})
  assert float(value) == pytest.approx(expected, rel=1e-6)


def test_thresholds_tuned_per_class_beat_one_half():
  rng = np.random.default_rng(0)
  targets = rng.random((200, 2)) < 0.4
  # Class 0 is under-confident (positives around 0.3), class 1 over-confident (negatives ~0.7).
  probs = np.where(targets, [0.3, 0.9], [0.1, 0.7]) + rng.uniform(-0.05, 0.05, (200, 2))
  thresholds = multilabel.tune_thresholds(targets, probs)
  assert 0.15 < thresholds[0] <= 0.35 and 0.75 < thresholds[1] <= 0.95
  tuned = multilabel.multilabel_report(targets, probs, thresholds, ["a", "b"])
  half = multilabel.multilabel_report(targets, probs, np.full(2, 0.5), ["a", "b"])
  assert tuned["macro_avg"]["f1"] == pytest.approx(1.0) and half["macro_avg"]["f1"] < 0.9
  assert tuned["per_class"]["a"]["threshold"] == pytest.approx(thresholds[0])
  assert tuned["mAP"] == pytest.approx(1.0)


def write_multilabel_csv(root, count=160):
  rng = np.random.default_rng(0)
  (root / "img").mkdir(parents=True)
  rows = ["path,label"]
  for i in range(count):
    present = [q for q in range(4) if rng.random() < 0.4] or [int(rng.integers(4))]
    image = rng.integers(0, 60, (16, 16), dtype=np.uint8)
    for q in present:
      top, left = divmod(q, 2)
      image[top * 8:(top + 1) * 8, left * 8:(left + 1) * 8] += 180
    Image.fromarray(image).save(root / "img" / f"{i}.png")
    rows.append(f"img/{i}.png,{';'.join(QUADRANTS[q] for q in present)}")
  (root / "labels.csv").write_text("\n".join(rows) + "\n")
  return root / "labels.csv"


@pytest.mark.slow
def test_multilabel_training_from_csv(tmp_path):
  csv_file = write_multilabel_csv(tmp_path / "data")
  out = tmp_path / "prepared"
  report = prepare.prepare(f"csv:{csv_file}", str(out), prepare.PrepareOptions(
      val_fraction=0.2, test_fraction=0.2))
  assert report["multi_label"]
  config = tiny_config(f"prepared:{out}", steps=24)
  config.task.name = "multi_label"  # what 'auto' picks for these data; named, as users may
  config.wandb.mode = "disabled"
  config.train.eval_every_steps = 12
  config.optim.name, config.optim.learning_rate = "adamw", 0.01
  result = loop.train(config, tmp_path / "run")
  assert result["multi_label"] and result["num_examples"] == 32
  assert set(result["per_class"]) == set(QUADRANTS)
  thresholds = json.loads((tmp_path / "run/thresholds.json").read_text())
  assert set(thresholds) == set(QUADRANTS) and all(0 < t < 1 for t in thresholds.values())
  assert result["macro_avg"]["f1"] > 0.6, result["macro_avg"]
  card = json.loads((tmp_path / "run/model_card.json").read_text())
  assert card["best_metric"] == "val/macro_f1"
  # A multi-label report: its per-class table in report.html, no softmax calibration.
  assert result["tta"] == "none" and "calibration" not in result
  assert "average_precision" in (tmp_path / "run/eval/test/report.html").read_text()
  metrics = [json.loads(l) for l in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
  assert any("val/mAP" in m for m in metrics)
  # experiments.evaluate's code scores the directory again: the same thresholds and report.
  (tmp_path / "run/thresholds.json").unlink()
  again = evaluate_workdir(tmp_path / "run", "test")
  assert again == result
  assert json.loads((tmp_path / "run/thresholds.json").read_text()) == thresholds
  assert "mAP:" in tasks.load(tmp_path / "run").summary(again)
  # predict names the classes over their thresholds.
  (line,) = predict_files(tmp_path / "run", [str(csv_file.parent / "img/0.png")])
  assert set(line) == {"file", "labels", "top"} and set(line["labels"]) <= set(QUADRANTS)
