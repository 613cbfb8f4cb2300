"""The benchmark command's three suites, the JSON keys other tools read, and its timing parts."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import pytest
import torch

from conftest import run_module
from vision import benchmark, profiling, torch_speed


@pytest.mark.slow
def test_benchmark_writes_all_figures(tmp_path):
  # The tiniest model, so that torch.compile's warm-up (a C++ build when its cache is cold)
  # stays short; compiled channels_last is the same path with the memory format set (below).
  out = tmp_path / "bench.json"
  result = run_module("experiments.benchmark", "--model=small_cnn", "--image_size=28",
                      "--batch_size=32", "--steps=2", "--matmul_size=512",
                      "--torch_variants=eager,channels_last,compile", "--profile",
                      f"--out={out}", timeout=900)
  figures = json.loads(out.read_text())
  for key in ("jax_images_per_s", "torch_images_per_s", "achieved_flops", "peak_flops",
              "grain_images_per_s", "in_memory_images_per_s"):
    assert figures[key] > 0, key
  assert 0 <= figures["pipeline_overhead"] < 1
  assert figures["achieved_flops"] == pytest.approx(
      figures["step_flops"] * figures["jax_images_per_s"] / 32, rel=1e-6)
  row, = figures["rows"]
  assert row["model"] == "small_cnn" and row["jax_images_per_s"] == figures["jax_images_per_s"]
  for key in ("untuned_images_per_s", "speedup_vs_untuned", "jax_vs_torch", "fraction_of_peak",
              "torch_fraction_of_peak", "torch_channels_last_images_per_s",
              "torch_compile_images_per_s", "torch_compile_seconds", "best_torch",
              "best_torch_images_per_s", "best_torch_fraction_of_peak"):
    assert row[key] > 0, key
  assert row["torch_compile_channels_last_images_per_s"] is None  # not asked for
  assert row["torch_errors"] == {}
  measured = {variant: row[key] for variant, key in benchmark.TORCH_KEYS.items() if row[key]}
  assert row["best_torch_variant"] == max(measured, key=measured.get)
  assert row["best_torch"] == pytest.approx(
      row["jax_images_per_s"] / max(measured.values()), rel=1e-6)
  assert row["jax_vs_torch"] == pytest.approx(
      row["jax_images_per_s"] / row["torch_images_per_s"], rel=1e-6)
  assert row["conv_impl"] == "auto"
  assert "--xla_cpu_use_onednn=true" in figures["xla_flags"]
  assert figures["suite"] == "default" and len(figures["load_average"]["before"]) == 3
  assert "JAX/best" in result.stdout and "pipeline overhead" in result.stdout
  assert "torch.compile warm-up: small_cnn" in result.stdout
  assert row["op_profile"]["kinds"] and "op time" in result.stdout


@pytest.mark.slow
def test_realistic_suite_against_pytorch_and_onnx_runtime(tmp_path):
  # The suite's machinery on a tiny model and size (the real one is ResNet-50 etc. at 224 px).
  out = tmp_path / "realistic.json"
  run_module("experiments.benchmark", "--suite=realistic", "--model=small_cnn",
             "--models=small_cnn", "--image_size=16", "--batch_size=4", "--steps=1",
             "--latency_repeats=2", "--matmul_size=256", "--torch_variants=eager,channels_last",
             f"--out={out}")
  figures = json.loads(out.read_text())
  assert figures["suite"] == "realistic"
  train, inference = figures["realistic"]["train"], figures["realistic"]["inference"]
  assert train["model"] == "small_cnn" and train["batch_size"] == 4 and train["image_size"] == 16
  assert train["jax_images_per_s"] > 0 and train["best_torch"] > 0
  row, = inference
  assert row["model"] == "small_cnn" and row["image_size"] == 16
  assert row["onnx_error"] is None and row["torch_errors"] == {}
  for key in ("jax_images_per_s", "jax_latency_ms", "fraction_of_peak", "torch_images_per_s",
              "torch_channels_last_images_per_s", "torch_latency_ms",
              "torch_channels_last_latency_ms", "best_torch", "best_torch_latency_ms",
              "onnx_images_per_s", "onnx_latency_ms", "jax_vs_onnx", "onnx_latency_ratio"):
    assert row[key] > 0, key
  assert row["jax_vs_onnx"] == pytest.approx(
      row["jax_images_per_s"] / row["onnx_images_per_s"], rel=1e-6)


@pytest.mark.slow
def test_accelerator_suite_on_fake_cpu_devices(tmp_path):
  # On CPU with two fake devices: the quickstart (cut further than smoke), one-device and
  # data-parallel steps. Only the command's working is checked; the figures mean nothing here.
  out = tmp_path / "accelerator.json"
  result = run_module(
      "experiments.benchmark", "--suite=accelerator", "--model=small_cnn", "--image_size=16",
      "--batch_size=4", "--steps=1", "--matmul_size=128",
      "--quickstart_config.data.max_train_examples=256",
      "--quickstart_config.data.max_eval_examples=128", "--quickstart_config.train.epochs=1",
      f"--out={out}", devices=2)
  figures = json.loads(out.read_text())
  assert figures["suite"] == "accelerator" and figures["devices"] == 2
  quickstart = figures["accelerator"]["quickstart"]
  assert quickstart["conv_impl"] == "auto" and 0 <= quickstart["test_accuracy"] <= 1
  step, parallel = figures["accelerator"]["step"], figures["accelerator"]["data_parallel"]
  assert step["devices"] == 1 and step["batch_size"] == 4 and step["dtype"] == "bfloat16"
  assert parallel["devices"] == 2 and parallel["batch_size"] == 8
  assert parallel["scaling"] == pytest.approx(
      parallel["images_per_s"] / (2 * step["images_per_s"]), rel=1e-6)
  for row in (step, parallel):
    assert row["images_per_s"] > 0 and 0 < row["fraction_of_peak"]
  assert "data-parallel (2 device(s), batch 8)" in result.stdout


def test_unknown_torch_setting_names_the_known_ones():
  assert torch_speed.check_variants(["eager", "compile"]) == ("eager", "compile")
  with pytest.raises(ValueError, match="unknown PyTorch setting.*fast.*expected some of eager"):
    torch_speed.check_variants(["eager", "fast"])


def test_interleaved_timing_takes_turns_and_reports_failures():
  calls = []

  def runner(name):
    return lambda: calls.append(name)

  def broken():
    raise RuntimeError("no C++ compiler\nlong traceback")

  timings = benchmark.time_interleaved({"a": runner("a"), "bad": broken, "b": runner("b")}, 3)
  # One warm-up call each, then rounds in turns; the failed runner is dropped.
  assert calls == ["a", "b", "a", "b", "a", "b", "a", "b"]
  assert set(timings.seconds) == set(timings.first_call) == {"a", "b"}
  assert timings.errors == {"bad": "RuntimeError: no C++ compiler"}


def test_torch_columns_pick_the_fastest_setting():
  timings = benchmark.Timings({"jax": 1.0, "eager": 1.0, "compile": 0.5},
                              {"jax": 2.0, "eager": 1.5, "compile": 20.5}, {})
  speeds = {"eager": 100.0, "compile": 200.0}
  columns = benchmark.torch_columns(300.0, speeds, timings, flops_per_image=1e6, peak=1e9)
  assert columns["best_torch_variant"] == "compile" and columns["best_torch"] == 1.5
  assert columns["jax_vs_torch"] == 3.0 and columns["torch_compile_seconds"] == 20.0
  assert columns["torch_channels_last_images_per_s"] is None
  assert columns["best_torch_fraction_of_peak"] == pytest.approx(0.2)


def test_compiled_channels_last_twin_is_set_up_as_named():
  spec = torch_speed.TorchInput(2, 3, 32, 10)
  model, forward = torch_speed._model("resnet18", spec, "compile_channels_last", train=True)  # pylint: disable=protected-access
  assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
  assert forward is not model and hasattr(forward, "_orig_mod")  # torch.compile's wrapper
  images = torch_speed.sample_images(spec, "compile_channels_last", 2)
  assert images.is_contiguous(memory_format=torch.channels_last)
  eager, forward = torch_speed._model("resnet18", spec, "eager", train=True)  # pylint: disable=protected-access
  assert forward is eager and eager.conv1.weight.is_contiguous()


def test_op_profile_sums_trace_events_by_hlo_op():
  x = jnp.ones((64, 64))
  step = jax.jit(lambda x: jnp.tanh(x @ x).sum(axis=0)).lower(x).compile()
  run = lambda: jax.block_until_ready(step(x))
  run()
  profile = profiling.op_profile(run, repeats=2)
  assert profile.ops and profile.total > 0
  assert sum(profile.kinds.values()) == pytest.approx(profile.total)
  # Every op named in the trace is an instruction of the compiled program.
  assert all(f"%{op} = " in step.as_text() or f" {op} = " in step.as_text() for op in profile.ops)
  assert profiling.op_kind("transpose_copy_fusion.64") == "transpose_copy_fusion"
  assert profiling.format_op_profile(profile).startswith("op time ")
