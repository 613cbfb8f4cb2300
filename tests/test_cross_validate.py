"""experiments.cross_validate: K folds, mean ± CI, out-of-fold probabilities, cleanlab label issues."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from conftest import read_idx_labels, run_module, write_idx_dataset, write_idx
from vision.train import cross_validate

TINY = "tests/configs/tiny.py"
FLIPPED = 24


def test_label_issues_rank_wrong_labels_first():
  rng = np.random.default_rng(0)
  labels = np.arange(200) % 4
  probs = np.full((200, 4), 0.02)
  probs[np.arange(200), labels] = 0.94
  wrong = rng.choice(200, 10, replace=False)
  given = labels.copy()
  given[wrong] = (labels[wrong] + 1) % 4
  ranked, scores = cross_validate.label_issues(given, probs)
  assert set(ranked[:10]) == set(wrong) and scores.shape == (200,)


@pytest.mark.slow
def test_cross_validate_finds_flipped_labels(tmp_path):
  data = write_idx_dataset(tmp_path / "idx")
  labels = read_idx_labels(data / "train-labels-idx1-ubyte.gz")
  flipped = np.random.default_rng(1).choice(len(labels), FLIPPED, replace=False)
  noisy = labels.copy()
  noisy[flipped] = (labels[flipped] + 1 + np.arange(FLIPPED) % 3) % 4
  write_idx(data / "train-labels-idx1-ubyte.gz", noisy, gzipped=True)
  workdir = tmp_path / "cv"
  result = run_module("experiments.cross_validate", f"--config={TINY}:source=idx:{data},steps=16",
                      "--folds=3", f"--workdir={workdir}", "--config.wandb.mode=disabled",
                      "--config.train.eval_every_steps=16")
  assert "accuracy:" in result.stdout and "± " in result.stdout
  report = json.loads((workdir / "cv_report.json").read_text())
  for key in ("accuracy", "macro_f1", "loss"):
    metric = report["metrics"][key]
    assert len(metric["values"]) == 3 and metric["ci95"] >= 0
    assert metric["mean"] == pytest.approx(np.mean(metric["values"]))
  oof = np.load(workdir / "oof_probs.npz")
  assert oof["probs"].shape == (512, 4) and np.allclose(oof["probs"].sum(1), 1, atol=1e-4)
  with open(workdir / "label_issues.csv") as handle:
    rows = list(csv.DictReader(handle))
  assert list(rows[0]) == ["path", "given_label", "suggested_label", "score"]
  # The pool is the carved train + val splits; paths name the IDX record, e.g. 'train[17]'.
  flipped_ids = {_record_id(i, data) for i in flipped}
  top = [row["path"] for row in rows[:FLIPPED]]
  precision = len(flipped_ids & set(top)) / FLIPPED
  flagged_precision = len(flipped_ids & {row["path"] for row in rows}) / len(rows)
  print(f"precision@{FLIPPED} of flipped labels: {precision:.3f}; {len(rows)} issues flagged, "
        f"{flagged_precision:.3f} of them flipped")
  assert precision >= 0.75 and flagged_precision >= 0.8, (precision, flagged_precision)


def _record_id(index: int, data) -> str:
  from vision.data.sources import SplitOptions, open_native, carve_splits  # pylint: disable=import-outside-toplevel
  if not hasattr(_record_id, "maps"):
    options = SplitOptions(val_fraction=0.125)
    splits = carve_splits(open_native(f"idx:{data}", options), options)
    _record_id.maps = {}
    for split in ("train", "val"):
      for position, original in enumerate(splits[split].records.indices):
        _record_id.maps[int(original)] = f"{split}[{position}]"
  return _record_id.maps[int(index)]
