"""The LR range test on the tiny quadrant task: a sane suggestion, a plot and a JSON file."""

from __future__ import annotations

import json

import pytest

from conftest import run_module
from vision.config import ConfigError
from vision.train import lr_find

TINY = "tests/configs/tiny.py"


def test_suggestion_is_a_tenth_of_the_smoothed_minimum_and_needs_enough_steps():
  lrs = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
  smoothed = [2.0, 1.9, 1.0, 0.5, 3.0]
  suggested, lowest, steepest = lr_find.suggest(lrs, smoothed)
  assert (suggested, lowest) == (pytest.approx(1e-2), 1e-1)
  assert steepest in (1e-3, 1e-2)
  with pytest.raises(ConfigError, match="too few"):
    lr_find.suggest(lrs[:2], smoothed[:2])


@pytest.mark.slow
def test_lr_find_cli_suggests_a_sane_rate_on_a_tiny_problem(tmp_path, idx_dir):
  out = tmp_path / "lr"
  result = run_module("experiments.lr_find", f"--config={TINY}:source=idx:{idx_dir}",
                      f"--workdir={out}", "--min_lr=1e-4", "--max_lr=100", "--num_steps=40")
  assert "suggested learning rate" in result.stdout
  values = json.loads((out / lr_find.JSON_FILE).read_text())
  # SGD with momentum on this easy task trains well from about 0.005 to 0.5.
  assert 1e-3 <= values["suggested_lr"] <= 1.0, values["suggested_lr"]
  assert values["lrs"][0] == pytest.approx(1e-4)
  assert all(b > a for a, b in zip(values["lrs"], values["lrs"][1:]))
  assert values["stopped_early"] and len(values["lrs"]) < 40  # 100 is far too high: it diverges.
  assert (out / lr_find.PLOT_FILE).stat().st_size > 5000
