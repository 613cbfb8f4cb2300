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
  row, = figures["rows"]
  assert row["model"] == "small_cnn" and row["jax_images_per_s"] == figures["jax_images_per_s"]
  for key in ("untuned_images_per_s", "speedup_vs_untuned", "jax_vs_torch", "fraction_of_peak",
              "torch_fraction_of_peak"):
    assert row[key] > 0, key
  assert row["jax_vs_torch"] == pytest.approx(
      row["jax_images_per_s"] / row["torch_images_per_s"], rel=1e-6)
  assert row["conv_impl"] == "auto"
  assert "--xla_cpu_use_onednn=true" in figures["xla_flags"]
  assert "JAX/PyTorch" in result.stdout and "pipeline overhead" in result.stdout
