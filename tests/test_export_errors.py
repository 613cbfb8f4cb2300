"""A converter's failure reaches the user as one line: format, op or reason, what to do."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys

from flax import nnx
import numpy as np
import onnx
from onnx import TensorProto, helper
import pytest

from conftest import REPO, child_env, write_idx_dataset
from vision import config as config_lib
from vision.checkpoint import ModelCard, write_model_dir
from vision.export import ExportError, export_workdir
from vision.export.converters import run_isolated
from vision.export.errors import converter_step
from vision.models import ModelOptions, create_model
import unconvertible_models  # registers gather_net and xor_net

pytestmark = pytest.mark.slow
SIZE = 16
TESTS = pathlib.Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
  return f"idx:{write_idx_dataset(tmp_path_factory.mktemp('data') / 'idx')}"


def _model_dir(directory: pathlib.Path, arch: str) -> pathlib.Path:
  options = ModelOptions(num_classes=4, in_channels=1, image_size=SIZE)
  card = ModelCard(arch=arch, num_classes=4, class_names=("a", "b", "c", "d"), image_size=SIZE,
                   channels=1, mean=(0.5,), std=(0.5,), model_options={})
  write_model_dir(directory, create_model(arch, options, rngs=nnx.Rngs(0)), card)
  return directory


def _export_command(*args: str) -> subprocess.CompletedProcess:
  """`python -m experiments.export ARGS` as a user runs it, with the test models registered."""
  env = child_env()
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
  code = ("import unconvertible_models\n"
          "from experiments import common, export\n"
          "common.run(export.main)")
  return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


def test_an_op_tflite_cannot_convert_is_one_line_and_out_is_untouched(tmp_path, data):
  workdir = _model_dir(tmp_path / "gather_net", "gather_net")
  # An earlier export in OUT: a failed conversion must leave it as it was.
  out = tmp_path / "out"
  out.mkdir()
  (out / "export.json").write_text('{"format": "tflite"}')
  (out / "model.tflite").write_bytes(b"earlier model")
  result = _export_command(f"--workdir={workdir}", "--format=tflite", f"--out={out}",
                           f"--data={data}")
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  line = lines[0]
  assert line.startswith("error: tflite: op 'vhlo.dynamic_gather_v1' "
                         "(tests/unconvertible_models.py:"), line
  assert "has no TFLite conversion; " in line and "lax.slice" in line
  assert "--format=stablehlo" in line and "Traceback" not in result.stderr
  assert (out / "model.tflite").read_bytes() == b"earlier model"
  assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.tflite"]
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no staging left


def test_an_op_tf2onnx_cannot_convert_names_it(tmp_path, data):
  workdir = _model_dir(tmp_path / "xor_net", "xor_net")
  with pytest.raises(ExportError) as caught:
    export_workdir(workdir, "onnx", tmp_path / "onnx", data=data, latency_repeats=1)
  assert str(caught.value) == (
      "onnx: tf2onnx cannot convert op 'BitwiseXor' from the TFLite model; export "
      "--format=tflite (the ONNX file is converted from it) or --format=saved_model")
  assert not (tmp_path / "onnx").exists()


def test_a_model_onnx_runtime_rejects_at_run_time_is_one_line(tmp_path):
  # Reshape [B, 4] to [3, 5]: valid ONNX, which ONNX Runtime refuses only when it runs.
  graph = helper.make_graph(
      [helper.make_node("Reshape", ["images", "shape"], ["logits"], name="reshape_to_15")],
      "broken", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 4])],
      [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
      [helper.make_tensor("shape", TensorProto.INT64, [2], [3, 5])])
  path = tmp_path / "broken.onnx"
  onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
  import onnxruntime as ort  # pylint: disable=import-outside-toplevel

  session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
  with pytest.raises(ExportError) as caught:
    with converter_step("onnx", stage="run"):
      session.run(None, {"images": np.zeros((2, 4), np.float32)})
  message = str(caught.value)
  assert message.startswith("onnx: ONNX Runtime fails at run time in Reshape node "
                            "'reshape_to_15'"), message
  assert "\n" not in message and "--format=tflite" in message


def test_our_own_errors_pass_through_unchanged():
  with pytest.raises(config_lib.ConfigError, match="a user mistake"):
    with converter_step("tflite"):
      raise config_lib.ConfigError("a user mistake")
  with pytest.raises(ExportError, match=r"^tflite: conversion failed: ValueError: first line; "):
    with converter_step("tflite"):
      raise ValueError("first line\nsecond line")


def test_a_converter_that_kills_its_process_is_one_line_not_a_dead_export():
  with pytest.raises(ExportError) as error:
    with converter_step("tflite"):
      run_isolated("the TFLite int8 converter", unconvertible_models.crash, signal.SIGSEGV)
  message = str(error.value)
  assert message.startswith("tflite: conversion failed: RuntimeError: the TFLite int8 converter "
                            "crashed: its process died"), message
  assert "\n" not in message
  assert run_isolated("a sum", sum, [1, 2, 3]) == 6  # an ordinary result comes back
