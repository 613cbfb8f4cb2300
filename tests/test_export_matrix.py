"""experiments.export_matrix: --targets, --schedule, and int8 parity of a trained depthwise net."""

from __future__ import annotations

import json

import pytest

from conftest import run_module
from experiments import export_matrix
from vision import config as config_lib
from vision.export.matrix import TARGETS, parse_targets, target_name


def test_targets_are_spelled_format_or_format_int8():
  assert parse_targets(["tflite_int8", "onnx"]) == (("tflite", True), ("onnx", False))
  assert parse_targets([target_name(*target) for target in TARGETS]) == TARGETS


@pytest.mark.parametrize("names", [["tflite_int4"], ["stablehlo_int8"], []])
def test_an_unknown_target_names_the_choices(names):
  with pytest.raises(config_lib.ConfigError, match="expected one or more of saved_model, "
                     "stablehlo, tflite, tflite_int8, onnx, onnx_int8"):
    parse_targets(names)


def test_a_wrong_target_on_the_command_line_is_one_line_before_any_training(tmp_path):
  result = run_module("experiments.export_matrix", f"--out={tmp_path}", "--cases=mobilenet_v2",
                      "--targets=onnx_fp16", check=False, timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1].startswith("error: --targets=onnx_fp16")
  assert not (tmp_path / "runs").exists()


def test_cosine_applies_to_the_families_and_shipped_configs_keep_their_recipe(tmp_path):
  family = export_matrix.case_config("mobilenet_v2", tmp_path, 3000, 100, "cosine")
  assert (family.optim.schedule, family.optim.warmup_epochs) == ("cosine", 0.05)
  assert family.train.num_steps == 3000
  constant = export_matrix.case_config("mobilenet_v2", tmp_path, 30, 100)
  assert (constant.optim.schedule, constant.optim.warmup_epochs) == ("constant", 0.0)
  quickstart = config_lib.from_file(export_matrix.REPO / "configs/fashion_mnist.py")
  shipped = export_matrix.case_config("fashion_mnist", tmp_path, 30, 100, "cosine")
  assert shipped.optim.to_dict() == quickstart.optim.to_dict()


@pytest.mark.slow
def test_a_trained_depthwise_network_passes_int8_parity_in_both_runtimes(tmp_path):
  # MobileNetV3-small, 1,000 steps (validation accuracy 0.81): 98.0% (TFLite) and 98.6% (ONNX)
  # agreement on these 500 images when written. After 100 steps (0.70) it was 96.4% and 96.1%:
  # its near-tie predictions flip under int8 rounding; the check's 97% is met once it is trained.
  matrix = tmp_path / "matrix.json"
  run_module("experiments.export_matrix", f"--out={tmp_path}", "--cases=mobilenet_v3_small",
             "--steps=1000", "--schedule=cosine", "--targets=tflite_int8,onnx_int8",
             "--max_examples=500", f"--json={matrix}", timeout=1200)
  rows = json.loads(matrix.read_text())
  assert [(row["format"], row["precision"]) for row in rows] == [("tflite", "int8"),
                                                                  ("onnx", "int8")]
  for row in rows:
    assert row["passed"] and row["num_examples"] == 500, row
    assert row["top1_agreement"] >= 0.97 and row["accuracy_jax"] > 0.75, row
