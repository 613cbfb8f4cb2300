"""The benchmark command: one run, every figure, and the JSON keys other tools read."""

from __future__ import annotations

import json

import pytest

from conftest import run_module

pytestmark = pytest.mark.slow


def test_benchmark_writes_all_figures(tmp_path):
  out = tmp_path / "bench.json"
  result = run_module("experiments.benchmark", "--model=small_cnn", "--image_size=28",
                      "--batch_size=32", "--steps=2", "--matmul_size=512", f"--out={out}")
  figures = json.loads(out.read_text())
  for key in ("jax_images_per_s", "torch_images_per_s", "achieved_flops", "peak_flops",
              "grain_images_per_s"):
    assert figures[key] > 0, key
  assert 0 <= figures["pipeline_overhead"] < 1
  assert figures["achieved_flops"] == pytest.approx(
      figures["step_flops"] * figures["jax_images_per_s"] / 32, rel=1e-6)
  assert "PyTorch eager" in result.stdout and "pipeline overhead" in result.stdout
