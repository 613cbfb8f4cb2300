"""Tests for vision.evaluate.report: metrics checked against hand computation."""

import json
import math
import warnings

import numpy as np
import PIL.Image
import pytest

from vision.evaluate import report as report_lib

# --- Hand-computed 3-class case --------------------------------------------
#
# labels: [0, 0, 0, 1, 1, 1, 2, 2]   (supports: cat 3, dog 3, bird 2)
# preds:  [0, 0, 1, 1, 1, 1, 2, 0]   (argmax of each row of PROBS below)
#
# Confusion matrix (rows true, columns predicted):
#   cat  [2, 1, 0]
#   dog  [0, 3, 0]
#   bird [1, 0, 1]
# Accuracy: (2 + 3 + 1) / 8 = 3/4.
#
# Per class (precision = TP / column sum, recall = TP / row sum):
#   cat:  P = 2/3, R = 2/3, F1 = 2/3
#   dog:  P = 3/4, R = 3/3 = 1, F1 = 2 * (3/4) * 1 / (7/4) = 6/7
#   bird: P = 1/1 = 1, R = 1/2, F1 = 2 * 1 * (1/2) / (3/2) = 2/3
# Macro:    P = (2/3 + 3/4 + 1) / 3 = 29/36
#           R = (2/3 + 1 + 1/2) / 3 = 13/18
#           F1 = (2/3 + 6/7 + 2/3) / 3 = 46/63
# Weighted (by support 3, 3, 2 out of 8):
#           P = (3 * 2/3 + 3 * 3/4 + 2 * 1) / 8 = 25/32
#           R = (3 * 2/3 + 3 * 1 + 2 * 1/2) / 8 = 3/4  (always = accuracy)
#           F1 = (3 * 2/3 + 3 * 6/7 + 2 * 2/3) / 8 = 31/42
# Loss: p[label] per row = .5, .8, .25, .8, .5, 1, .5, 0 -> clipped to 1e-12.
#   sum(-log p) = 3 ln 2 + 2 ln(5/4) + 2 ln 2 + 0 + 12 ln 10
#               = ln 2 + 2 ln 5 + 12 ln 10 = ln 50 + 12 ln 10
#   loss = (ln 50 + 12 ln 10) / 8 ~= 3.94288
CLASS_NAMES = ["cat", "dog", "bird"]
LABELS = np.array([0, 0, 0, 1, 1, 1, 2, 2])
PROBS = np.array([
    [0.50, 0.25, 0.25],
    [0.80, 0.10, 0.10],
    [0.25, 0.50, 0.25],
    [0.10, 0.80, 0.10],
    [0.25, 0.50, 0.25],
    [0.00, 1.00, 0.00],
    [0.25, 0.25, 0.50],
    [1.00, 0.00, 0.00],
])


@pytest.fixture(name="report")
def _report():
  return report_lib.classification_report(LABELS, PROBS, CLASS_NAMES)


def test_hand_computed_headline_metrics(report):
  assert report["num_examples"] == 8
  assert report["accuracy"] == pytest.approx(3 / 4)
  assert report["loss"] == pytest.approx((math.log(50) + 12 * math.log(10)) / 8)
  assert report["class_names"] == CLASS_NAMES
  assert report["confusion_matrix"] == [[2, 1, 0], [0, 3, 0], [1, 0, 1]]


def test_hand_computed_per_class(report):
  expected = {
      "cat": {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3},
      "dog": {"precision": 3 / 4, "recall": 1.0, "f1": 6 / 7, "support": 3},
      "bird": {"precision": 1.0, "recall": 1 / 2, "f1": 2 / 3, "support": 2},
  }
  assert list(report["per_class"]) == CLASS_NAMES
  for name, scores in expected.items():
    assert report["per_class"][name] == pytest.approx(scores), name
    assert type(report["per_class"][name]["support"]) is int


def test_hand_computed_averages(report):
  assert report["macro_avg"] == pytest.approx(
      {"precision": 29 / 36, "recall": 13 / 18, "f1": 46 / 63})
  assert report["weighted_avg"] == pytest.approx(
      {"precision": 25 / 32, "recall": 3 / 4, "f1": 31 / 42})


def test_report_has_exactly_the_contract_keys(report):
  # Three classes: no top-5 entry.
  assert set(report) == {
      "num_examples", "accuracy", "loss", "class_names", "per_class",
      "macro_avg", "weighted_avg", "confusion_matrix",
  }
  for name in CLASS_NAMES:
    assert set(report["per_class"][name]) == {
        "precision", "recall", "f1", "support"}


def test_report_is_plain_json(report):
  assert json.loads(json.dumps(report, allow_nan=False)) == report
  assert type(report["accuracy"]) is float
  assert type(report["num_examples"]) is int
  assert all(type(c) is int for row in report["confusion_matrix"] for c in row)


# --- Top-5 -----------------------------------------------------------------


def test_top5_accuracy_hand_computed():
  # Every row has the same scores, so class 0 ranks 1st ... class 5 ranks 6th.
  # labels 0, 5, 4, 3, 5 rank 1, 6, 5, 4, 6: top-5 hits 3 of 5 = 0.6, and
  # only the first is a top-1 hit: 1/5 = 0.2.
  scores = np.array([0.30, 0.25, 0.20, 0.12, 0.08, 0.05])
  labels = np.array([0, 5, 4, 3, 5])
  probs = np.tile(scores, (5, 1))
  report = report_lib.classification_report(labels, probs, list("abcdef"))
  assert report["top5_accuracy"] == pytest.approx(0.6)
  assert report["accuracy"] == pytest.approx(0.2)


def test_no_top5_with_four_classes():
  probs = np.eye(4)
  report = report_lib.classification_report(np.arange(4), probs, list("abcd"))
  assert "top5_accuracy" not in report
  assert report["accuracy"] == 1.0


# --- Classes that never occur ----------------------------------------------


def test_absent_class_gets_zeros_without_warnings():
  # Class "c" is neither a label nor predicted; class "b" is predicted once
  # but never a label (precision 0/1 = 0, recall 0/0 -> 0).
  labels = np.array([0, 0, 0])
  probs = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.3, 0.7, 0.0]])
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    report = report_lib.classification_report(labels, probs, ["a", "b", "c"])
  zeros = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
  assert report["per_class"]["c"] == zeros
  assert report["per_class"]["b"] == zeros
  assert report["confusion_matrix"] == [[2, 1, 0], [0, 0, 0], [0, 0, 0]]


# --- Validation ------------------------------------------------------------


@pytest.mark.parametrize(
    "labels, probs, names, message",
    [
        (np.array([0, 1]), np.array([0.5, 0.5]), ["a", "b"], "probs must be 2-D"),
        (np.array([0, 1]), np.eye(2), ["a", "b", "c"], "2 columns but there are 3"),
        (np.array([0, 1, 1]), np.eye(2), ["a", "b"], "labels has 3 entries"),
        (np.array([[0, 1]]), np.eye(2), ["a", "b"], "labels must be 1-D"),
        (np.array([0, 2]), np.eye(2), ["a", "b"], r"labels must be in \[0, 2\)"),
        (np.array([-1, 0]), np.eye(2), ["a", "b"], r"labels must be in \[0, 2\)"),
        (np.array([0.0, 1.0]), np.eye(2), ["a", "b"], "labels must be integers"),
        (np.array([0, 1]), np.eye(2), ["a", "a"], "class_names must be unique"),
        (np.zeros(0, int), np.zeros((0, 2)), ["a", "b"], "at least one example"),
    ],
)
def test_bad_inputs_raise(labels, probs, names, message):
  with pytest.raises(ValueError, match=message):
    report_lib.classification_report(labels, probs, names)


def test_plot_rejects_mismatched_matrix(tmp_path):
  with pytest.raises(ValueError, match="matrix must be 3x3"):
    report_lib.plot_confusion_matrix([[1, 0], [0, 1]], ["a", "b", "c"],
                                     tmp_path / "cm.png")


# --- Writing ---------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_readable_png(path):
  assert path.read_bytes()[:8] == PNG_SIGNATURE
  assert path.stat().st_size > 5_000
  with PIL.Image.open(path) as image:
    assert image.width > 200 and image.height > 200


def test_write_report_round_trips(report, tmp_path):
  out_dir = tmp_path / "nested" / "eval"
  paths = report_lib.write_report(report, out_dir)

  assert paths == {"json": out_dir / "report.json",
                   "confusion_matrix": out_dir / "confusion_matrix.png"}
  assert json.loads(paths["json"].read_text()) == report
  _assert_readable_png(paths["confusion_matrix"])
  # No temp files left behind.
  assert sorted(p.name for p in out_dir.iterdir()) == [
      "confusion_matrix.png", "report.json"]


def test_write_report_overwrites_existing(report, tmp_path):
  report_lib.write_report(report, tmp_path)
  updated = dict(report, accuracy=0.5)
  paths = report_lib.write_report(updated, tmp_path)
  assert json.loads(paths["json"].read_text())["accuracy"] == 0.5


def test_crashed_write_keeps_previous_report(report, tmp_path, monkeypatch):
  paths = report_lib.write_report(report, tmp_path)
  before = paths["json"].read_bytes()

  def crash(*args, **kwargs):
    raise RuntimeError("simulated crash while plotting")

  monkeypatch.setattr(report_lib, "plot_confusion_matrix", crash)
  with pytest.raises(RuntimeError, match="simulated crash"):
    report_lib.write_report(dict(report, accuracy=0.0), tmp_path)
  assert paths["json"].read_bytes() == before
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      "confusion_matrix.png", "report.json"]


def test_plot_many_classes(tmp_path):
  # 50 classes: no per-cell numbers, but the figure must still render.
  rng = np.random.default_rng(0)
  matrix = rng.integers(0, 20, size=(50, 50)).tolist()
  path = tmp_path / "cm50.png"
  report_lib.plot_confusion_matrix(matrix, [f"class_{i}" for i in range(50)],
                                   path, title="50 classes")
  _assert_readable_png(path)


# --- Summary ---------------------------------------------------------------


def test_format_summary(report):
  text = report_lib.format_summary(report)
  assert "accuracy:   0.7500" in text
  assert "macro F1:   0.7302" in text  # 46/63
  assert "top-5" not in text
  table = text.split("\n\n")[1].splitlines()
  assert table[0].split() == ["class", "precision", "recall", "f1", "support"]
  assert [line.split()[0] for line in table[1:]] == CLASS_NAMES
  assert table[2].split() == ["dog", "0.7500", "1.0000", "0.8571", "3"]
  # Columns are aligned: every table line has the same width.
  assert len({len(line) for line in table}) == 1


def test_format_summary_shows_top5():
  report = report_lib.classification_report(
      np.arange(6), np.eye(6), list("abcdef"))
  assert "top-5 acc:  1.0000" in report_lib.format_summary(report)
