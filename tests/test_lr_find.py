"""The LR range test on the tiny quadrant task: a sane suggestion, a plot and a JSON file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_module, tiny_config
from vision.train import lr_find

TINY = "tests/configs/tiny.py"


def _curve(losses: list[float], min_lr: float = 1e-4, factor: float = 2.0):
  lrs = [min_lr * factor ** i for i in range(len(losses))]
  return lrs, lr_find.smooth(losses)


def test_suggestion_is_a_tenth_of_the_smoothed_minimum_within_the_range():
  # Falls from 2.0 to a minimum at the 10th LR, then rises.
  losses = [2.0, 2.0, 1.9, 1.7, 1.3, 0.9, 0.6, 0.45, 0.4, 0.38, 0.6, 1.5, 4.0]
  lrs, smoothed = _curve(losses)
  found = lr_find.suggest(lrs, smoothed)
  best = int(np.argmin(smoothed))
  assert found.conclusive and found.min_loss_lr == lrs[best]
  assert found.suggested_lr == pytest.approx(lrs[best] / 10)
  slopes = np.gradient(smoothed, np.log(lrs))
  assert found.steepest_lr == lrs[int(np.argmin(slopes[:best + 1]))]
  assert slopes[lrs.index(found.steepest_lr)] < 0

  # A minimum one step in: a tenth of it lies below --min_lr, so the first LR is suggested.
  lrs, smoothed = _curve([2.0, 1.0, 1.5, 2.5, 3, 4, 5, 6, 7, 8, 9], factor=3.0)
  found = lr_find.suggest(lrs, smoothed)
  assert found.suggested_lr == lrs[0] and "below --min_lr" in found.note


def test_a_curve_that_only_rises_is_inconclusive_with_no_suggestion():
  lrs, smoothed = _curve([2.4, 152.0, 10340.0, 1e5, 1e6, 1e7], min_lr=1.0, factor=2.5)
  found = lr_find.suggest(lrs, smoothed, diverged=True)
  assert not found.conclusive and found.suggested_lr is None and found.steepest_lr is None
  assert "lowest at the first LR (1)" in found.note and "lower --min_lr" in found.note
  lrs, smoothed = _curve([2.3, 2.2, 2.25])
  found = lr_find.suggest(lrs, smoothed)
  assert not found.conclusive and found.suggested_lr is None
  assert "too few steps (3)" in found.note and "raise --num_steps" in found.note
  found = lr_find.suggest([], [], diverged=True)
  assert not found.conclusive and "NaN/Inf from the first step" in found.note


def test_the_issue_cases_never_suggest_outside_the_range(idx_dir, tmp_path):
  config = tiny_config(f"idx:{idx_dir}")
  # --min_lr=1 --max_lr=100: the loss only rises. Before: "suggested 0.1", outside the range.
  high = lr_find.find_lr(config, min_lr=1.0, max_lr=100.0, num_steps=40)
  assert high.losses[-1] > high.losses[0]
  assert not high.conclusive and high.suggested_lr is None
  assert "the range starts too high" in high.note or "climbs too high" in high.note
  assert all(1.0 <= lr <= 100.0 for lr in high.lrs)
  # --num_steps=3: too few steps. Before: "suggested 1e-06", below --min_lr.
  few = lr_find.find_lr(config, min_lr=1e-5, max_lr=10.0, num_steps=3)
  assert len(few.lrs) == 3 and not few.conclusive and few.suggested_lr is None
  assert "too few steps (3)" in few.note
  # What experiments.lr_find prints for them.
  assert high.summary().startswith("no suggestion: the test was inconclusive: ")
  assert few.summary() == f"no suggestion: the test was {few.note} (3 steps)"
  paths = high.write(tmp_path)  # the plot without a suggestion to mark
  assert json.loads(paths["json"].read_text())["suggested_lr"] is None
  assert paths["plot"].stat().st_size > 5000


@pytest.mark.slow
def test_lr_find_cli_suggests_a_sane_rate_on_a_tiny_problem(tmp_path, idx_dir):
  out = tmp_path / "lr"
  result = run_module("experiments.lr_find", f"--config={TINY}:source=idx:{idx_dir}",
                      f"--workdir={out}", "--min_lr=1e-4", "--max_lr=100", "--num_steps=40")
  assert "suggested learning rate" in result.stdout
  values = json.loads((out / lr_find.JSON_FILE).read_text())
  # SGD with momentum on this easy task trains well from about 0.005 to 0.5.
  assert values["conclusive"] and 1e-3 <= values["suggested_lr"] <= 1.0, values["suggested_lr"]
  assert values["lrs"][0] == pytest.approx(1e-4)
  assert all(b > a for a, b in zip(values["lrs"], values["lrs"][1:]))
  assert values["stopped_early"] and len(values["lrs"]) < 40  # 100 is far too high: it diverges.
  assert (out / lr_find.PLOT_FILE).stat().st_size > 5000

