"""Active learning's parts: each strategy on a case with a known answer, scoring, tasks, curves."""

from __future__ import annotations

import json
import pathlib
import xml.etree.ElementTree as ET

from flax import nnx
import jax
import jsonschema
import numpy as np
import pytest

from vision.active import curve, labelstudio, scoring, strategies
from vision.active.strategies import PoolScores, select
from vision.checkpoint import ModelCard
from vision.config import ConfigError
from vision.data.sources import ArraySource
from vision.models import ModelOptions, create_model

# Rows built so that each uncertainty measure has a different most-uncertain row:
# row 1 has the smallest top-two margin (0.5 vs 0.5), row 2 the lowest top probability
# (0.4), row 3 the highest entropy (0.42, then 0.58 spread over nine classes).
UNCERTAIN = np.array([
    [0.96] + [0.04 / 9] * 9,
    [0.5, 0.5] + [0.0] * 8,
    [0.4] + [0.15] * 4 + [0.0] * 5,
    [0.42] + [0.58 / 9] * 9,
    [0.9, 0.1] + [0.0] * 8,
])


@pytest.mark.parametrize("strategy, most_wanted", [
    ("margin", 1), ("least_confidence", 2), ("entropy", 3)])
def test_uncertainty_strategies_pick_their_most_uncertain_row_first(strategy, most_wanted):
  chosen, scores = select(strategy, PoolScores(probs=UNCERTAIN), 2)
  assert chosen[0] == most_wanted
  assert scores[0] >= scores[1]
  # The confident row is never among the first picks.
  assert 0 not in select(strategy, PoolScores(probs=UNCERTAIN), 3)[0]


def test_bald_prefers_disagreeing_dropout_samples_over_plain_uncertainty():
  # Image 0: every sample is uniform (high entropy, but the weights agree: MI = 0).
  # Image 1: each sample is confident, in a different class (MI = log 2).
  samples = np.array([[[0.5, 0.5], [0.99, 0.01]], [[0.5, 0.5], [0.01, 0.99]]])  # [T, N, C]
  information = strategies.mutual_information(samples)
  np.testing.assert_allclose(information[0], 0.0, atol=1e-6)
  assert information[1] > 0.6
  scores = PoolScores(probs=samples.mean(axis=0), mutual_information=information)
  assert select("bald", scores, 1)[0][0] == 1
  assert select("entropy", scores, 1)[0][0] == 0  # entropy alone would have asked for image 0


def test_coreset_picks_the_far_away_clusters_first():
  rng = np.random.default_rng(0)
  near = rng.normal(0, 0.1, (40, 8))               # where the labelled images already are
  far_a = rng.normal(0, 0.1, (5, 8)) + 10
  far_b = rng.normal(0, 0.1, (5, 8)) - 10
  pool = np.concatenate([near, far_a, far_b])
  labelled = rng.normal(0, 0.1, (10, 8))
  chosen, distances = select("coreset", PoolScores(probs=np.full((50, 2), 0.5), embeddings=pool,
                                                   labelled_embeddings=labelled), 2)
  assert {chosen[0] // 5, chosen[1] // 5} == {8, 9}  # one image of each far cluster
  assert distances[0] >= distances[1] > 5
  # Without labelled centres, k-center greedy still spreads out: three picks, three clusters.
  alone, _ = strategies.k_center_greedy(pool, None, 3, seed=0)
  assert {0 if i < 40 else 1 if i < 45 else 2 for i in alone} == {0, 1, 2}


def test_badge_gradient_embeddings_and_diverse_uncertain_picks():
  probs = np.array([[0.7, 0.3], [1.0, 0.0]])
  features = np.array([[1.0, 2.0], [3.0, 4.0]])
  # (p - onehot(argmax p)) ⊗ h: row 0 is (-0.3, 0.3) ⊗ (1, 2); a certain row has no gradient.
  np.testing.assert_allclose(strategies.gradient_embeddings(probs, features),
                             [[-0.3, -0.6, 0.3, 0.6], [0, 0, 0, 0]], atol=1e-6)
  rng = np.random.default_rng(1)
  confident = np.tile([0.999, 0.001], (60, 1))
  uncertain = np.tile([0.5, 0.5], (9, 1))
  pool_probs = np.concatenate([confident, uncertain])
  directions = np.repeat(np.eye(3) * 5, 3, axis=0) + rng.normal(0, 0.01, (9, 3))
  embeddings = np.concatenate([rng.normal(0, 0.01, (60, 3)), directions])
  chosen, norms = select("badge", PoolScores(probs=pool_probs, embeddings=embeddings), 4, seed=0)
  assert len(set(chosen.tolist())) == 4
  uncertain_clusters = {(int(i) - 60) // 3 for i in chosen if i >= 60}
  assert uncertain_clusters == {0, 1, 2}  # every uncertain direction, at most one wasted pick
  assert np.all(norms >= 0)


def test_random_is_seeded_and_select_checks_its_arguments():
  scores = PoolScores(probs=np.full((100, 3), 1 / 3))
  first, _ = select("random", scores, 10, seed=4)
  assert np.array_equal(first, select("random", scores, 10, seed=4)[0])
  assert not np.array_equal(first, select("random", scores, 10, seed=5)[0])
  assert len(set(first.tolist())) == 10
  assert len(select("margin", PoolScores(probs=UNCERTAIN), 50)[0]) == 5  # the whole pool
  with pytest.raises(ConfigError, match="--strategy='smallest' is unknown; expected one of"):
    select("smallest", scores, 1)


@pytest.fixture(scope="module")
def small_model():
  options = ModelOptions(num_classes=4, in_channels=1, image_size=16, dropout=0.5, widths=(4, 8),
                         hidden=16)
  model = create_model("small_cnn", options, rngs=nnx.Rngs(0))
  card = ModelCard("small_cnn", 4, ("a", "b", "c", "d"), 16, 1, (0.5,), (0.25,), {})
  images = np.random.default_rng(0).integers(0, 255, (37, 16, 16, 1), dtype=np.uint8)
  return model, card, ArraySource(images, np.zeros(37, np.int64))


def test_scoring_matches_the_model_and_runs_mc_dropout(small_model):
  model, card, pool = small_model
  scores, labels = scoring.score_pool(model, card, pool, strategy="bald", batch_size=16,
                                      mc_samples=4)
  assert scores.probs.shape == (37, 4) and labels.shape == (37,)
  model.eval()
  images = (pool.read_arrays(np.arange(37))[0].astype(np.float32) / 255 - 0.5) / 0.25
  np.testing.assert_allclose(scores.probs, jax.nn.softmax(model(images)), atol=1e-5)
  # Dropout 0.5 on: the samples disagree, so the mutual information is positive.
  assert scores.mutual_information.shape == (37,) and scores.mutual_information.min() > 0
  coreset, _ = scoring.score_pool(model, card, pool, strategy="coreset", labelled=pool,
                                  batch_size=16)
  np.testing.assert_allclose(coreset.embeddings, model.features(images), atol=1e-5)
  assert coreset.labelled_embeddings.shape == (37, 16) and coreset.mutual_information is None


# Label Studio's import format for tasks with pre-annotations (labelstud.io/guide/predictions,
# /guide/task_format): a list of tasks, each with a `data` object naming the image and an
# optional `predictions` list; a prediction has `result` regions (from_name / to_name of the
# labelling config, `type`, `value`), an optional float `score` and a `model_version` string.
LABEL_STUDIO_TASKS = {
    "type": "array", "minItems": 1,
    "items": {
        "type": "object", "required": ["data"],
        "properties": {
            "data": {"type": "object", "required": ["image"],
                     "properties": {"image": {"type": "string", "minLength": 1}}},
            "predictions": {"type": "array", "items": {
                "type": "object", "required": ["result"],
                "properties": {
                    "model_version": {"type": "string"},
                    "score": {"type": "number", "minimum": 0, "maximum": 1},
                    "result": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "required": ["from_name", "to_name", "type", "value"],
                        "properties": {
                            "from_name": {"type": "string"}, "to_name": {"type": "string"},
                            "type": {"const": "choices"},
                            "value": {"type": "object", "required": ["choices"], "properties": {
                                "choices": {"type": "array", "minItems": 1,
                                            "items": {"type": "string"}}}}}}}}}},
        }}}


def check_label_studio_tasks(directory: pathlib.Path) -> list[dict]:
  """Validates labelstudio_tasks.json against the import format and its label_config.xml."""
  tasks = json.loads((directory / labelstudio.TASKS).read_text())
  jsonschema.validate(tasks, LABEL_STUDIO_TASKS)
  view = ET.fromstring((directory / labelstudio.LABEL_CONFIG).read_text())
  image, choices = view.find("Image"), view.find("Choices")
  assert image.get("value") == "$image"
  names = {c.get("value") for c in choices.findall("Choice")}
  for task in tasks:
    for prediction in task["predictions"]:
      for region in prediction["result"]:
        assert (region["from_name"], region["to_name"]) == (choices.get("name"), image.get("name"))
        assert set(region["value"]["choices"]) <= names
  return tasks


def test_label_studio_tasks_round_trip_through_the_export_reader(tmp_path):
  names = ("Shirt", "T-shirt/top", 'Bag "large"')
  probs = np.array([[0.2, 0.5, 0.3], [0.9, 0.05, 0.05]])
  paths = ["nested/a b.png", "c.png"]
  tasks = labelstudio.query_tasks(paths, probs, names, np.array([0.8, 0.1]),
                                  model_version="round-2", top_k=2)
  labelstudio.write_queries(tmp_path / "queries", tasks, names)
  written = check_label_studio_tasks(tmp_path / "queries")
  assert [t["data"]["priority"] for t in written] == [1, 2]
  assert written[0]["data"]["image"] == "/data/local-files/?d=nested/a%20b.png"
  first = written[0]["predictions"]
  assert [p["result"][0]["value"]["choices"][0] for p in first] == ["T-shirt/top", 'Bag "large"']
  assert first[0]["score"] == pytest.approx(0.5)
  csv_lines = (tmp_path / "queries" / labelstudio.QUERIES_CSV).read_text().splitlines()
  assert csv_lines[0] == "priority,path,acquisition,predicted,probability,top_k"
  assert csv_lines[1].startswith("1,nested/a b.png,0.8,T-shirt/top,0.5000,")
  # The annotator's export: the tasks come back with annotations (one cancelled, one missing,
  # one with a class the model does not have).
  pool = tmp_path / "pool"
  (pool / "nested").mkdir(parents=True)
  for name in ("nested/a b.png", "c.png", "d.png", "e.png"):
    (pool / name).write_bytes(b"")

  def annotated(path, choice, cancelled=False):
    return {"data": {"image": labelstudio.image_url(path)}, "annotations": [{
        "was_cancelled": cancelled, "result": [{"from_name": "choice", "to_name": "image",
                                                "type": "choices", "value": {"choices": [choice]}}]}]}
  export = [annotated("nested/a b.png", "Shirt"), annotated("c.png", "Bag \"large\""),
            annotated("d.png", "Shirt", cancelled=True), annotated("e.png", "Dress"),
            {"data": {"image": labelstudio.image_url("c.png")}, "annotations": []}]
  (tmp_path / "export.json").write_text(json.dumps(export))
  labels, problems = labelstudio.read_export(tmp_path / "export.json", pool, names)
  assert labels == {"nested/a b.png": "Shirt", "c.png": 'Bag "large"'}
  assert any("e.png" in p and "'Dress' is not one of the model's classes" in p for p in problems)
  assert sum("annotation" in p for p in problems) == 2


def test_curve_summary_table_and_plot(tmp_path):
  rows = [{"strategy": s, "seed": seed, "round": r, "num_labels": 100 * (r + 1),
           "test_accuracy": base + 0.1 * r + 0.01 * seed, "macro_f1": base + 0.1 * r}
          for s, base in (("random", 0.5), ("margin", 0.52)) for seed in range(3) for r in range(2)]
  summary = curve.summarise(rows)
  assert summary["margin"][200]["mean"] == pytest.approx(0.63)
  assert summary["margin"][200]["values"] == pytest.approx([0.62, 0.63, 0.64])
  assert summary["margin"][200]["ci95"] == pytest.approx(0.01 / np.sqrt(3) * 4.302653, rel=1e-4)
  text = curve.table(rows, full_data_accuracy=0.9)
  margin_line = next(line for line in text.splitlines() if line.startswith("| margin"))
  assert "0.6300 ± 0.0248" in margin_line and "+2.00 pt" in margin_line
  assert "-27.00 pt" in margin_line
  curve.plot(rows, tmp_path / "curve.png", full_data_accuracy=0.9)
  assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
