"""Paired comparisons over seeds (vision/comparison.py) and a sweep's `baseline` key."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vision import comparison
from vision import sweep as sweep_lib
from vision.config import ConfigError

KEY, METRIC = "distill.variant", "test/accuracy"


def _rows(results, status="COMPLETE"):
  return [{"trial": i, "status": status, KEY: variant, "seed": seed, METRIC: value,
           "test/agreement": value + 0.05, "wall_time_s": 1.0, "workdir": "w", "error": ""}
          for i, (variant, seed, value) in enumerate(results)]


def test_mean_difference_and_its_95_percent_t_interval_match_a_hand_computation():
  rows = _rows([("alone", 0, 0.900), ("alone", 1, 0.901), ("alone", 2, 0.899),
                ("distilled", 0, 0.910), ("distilled", 1, 0.908), ("distilled", 2, 0.911)])
  result = comparison.paired_comparison(rows, key=KEY, baseline="alone", metric=METRIC)
  assert result["pair_by"] == ["seed"]
  summary = result["variants"]["distilled"]
  assert [p["seed"] for p in summary["pairs"]] == [0, 1, 2]
  differences = [0.010, 0.007, 0.012]
  assert [p["difference"] for p in summary["pairs"]] == pytest.approx(differences)
  mean = sum(differences) / 3
  sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / 2)
  half = 4.302652729911275 * sd / math.sqrt(3)  # t(0.975, 2 degrees of freedom)
  assert summary["mean_difference"] == pytest.approx(mean)
  assert summary["interval_95"] == pytest.approx([mean - half, mean + half])
  assert summary["min_difference"] == pytest.approx(0.007) and summary["all_positive"]
  assert result["means"]["alone"][METRIC] == pytest.approx(0.9)
  assert result["means"]["distilled"]["test/agreement"] == pytest.approx(0.9596666, rel=1e-6)
  text = comparison.format_comparison(result)
  assert "+0.0100" in text and f"{mean - half:+.4f} to {mean + half:+.4f}" in text


def test_pairs_need_both_variants_complete_and_csv_strings_are_read():
  rows = _rows([("alone", 0, 0.90), ("distilled", 0, 0.89), ("alone", 1, 0.91),
                ("distilled", 1, 0.93)])
  rows[3]["status"] = "FAIL"  # seed 1 has no distilled result: no pair
  rows += [{"trial": 9, "status": "COMPLETE", KEY: "distilled", "seed": "2", METRIC: "0.95"}]
  csv_like = [{k: str(v) for k, v in row.items()} for row in rows]
  result = comparison.paired_comparison(csv_like, key=KEY, baseline="alone", metric=METRIC,
                                        pair_by=["seed"])
  summary = result["variants"]["distilled"]
  assert [p["seed"] for p in summary["pairs"]] == ["0"]
  assert summary["mean_difference"] == pytest.approx(-0.01)
  assert summary["interval_95"] == [None, None] and not summary["all_positive"]
  assert "undefined" in comparison.format_comparison(result)


def _spec(baseline):
  return {"method": "grid", "metric": METRIC, "baseline": baseline,
          "parameters": {KEY: ["alone", "distilled"], "seed": [0, 1, 2]}}


def test_a_sweep_baseline_names_a_swept_list_and_one_of_its_values():
  spec = sweep_lib.SweepSpec.from_dict(_spec({KEY: "alone"}), "compare")
  assert spec.baseline == {KEY: "alone"} and spec.num_trials == 6
  for bad in ({KEY: "teacher"}, {"seed": 7}, {"optim.learning_rate": 0.1}, "alone",
              {KEY: "alone", "seed": 0}):
    with pytest.raises(ConfigError, match=r"get_sweep\(\)\['baseline'\] must be"):
      sweep_lib.SweepSpec.from_dict(_spec(bad), "compare")


def test_confidence_interval_is_student_t():
  values = [0.8, 0.9, 1.0]
  # t(0.975, 2) = 4.3027; sem = 0.1 / sqrt(3)
  assert comparison.confidence_interval(values) == pytest.approx(4.3027 * 0.1 / np.sqrt(3),
                                                                 rel=1e-4)
  assert comparison.t_interval_95(values) == pytest.approx((0.9 - 4.3027 * 0.1 / np.sqrt(3),
                                                            0.9 + 4.3027 * 0.1 / np.sqrt(3)),
                                                           rel=1e-4)
