"""Export in every format, checked in its own runtime against the JAX model."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from conftest import run_module
from vision.checkpoint import load_model
from vision.export import ExportedModel, ParityError, export_workdir, load_exported
from vision.export import converters
from vision.export import export as export_lib
from vision.export.compare import compare_latency, format_latency_table

pytestmark = pytest.mark.slow
REPORT_KEYS = {"top1_agreement", "accuracy_exported", "accuracy_jax", "max_abs_logit_diff",
               "size_bytes", "latency_ms_per_image"}


def _images(count: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (count, 16, 16, 1), dtype=np.uint8)


def _jax_outputs(workdir: pathlib.Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  model, card = load_model(workdir)
  x = (images.astype(np.float32) / 255.0 - np.asarray(card.mean, np.float32)) / np.asarray(
      card.std, np.float32)
  return np.asarray(model(x)), np.asarray(model.features(x))


def _check_directory(out: pathlib.Path, fmt: str, workdir: pathlib.Path, int8: bool = False):
  info = json.loads((out / "export.json").read_text())
  assert info["format"] == fmt and info["int8"] is int8 and info["arch"] == "small_cnn"
  assert (info["quantization"] == "none") is not int8
  assert info["class_names"] == ["a", "b", "c", "d"]
  assert info["input"] == {"name": "images", "dtype": "uint8", "layout": "NHWC",
                           "batch_size": 1 if int8 else None, "height": 16, "width": 16,
                           "channels": 1}
  assert info["outputs"] == ["logits", "probabilities", "embedding"]
  assert info["task"]["temperature"] == json.loads(
      (workdir / "model_card.json").read_text())["task"]["temperature"]
  assert info["source_workdir"] == str(workdir.absolute())
  assert (out / info["model_file"]).exists() and len(info["version"]) == 12
  report = json.loads((out / "export_report.json").read_text())
  assert REPORT_KEYS <= set(report) and report["passed"] and report["num_examples"] == 64
  assert report["size_bytes"] > 10_000 and report["latency_ms_per_image"] > 0
  return info, report


@pytest.mark.parametrize("fmt", ["tflite", "onnx", "stablehlo", "saved_model"])
def test_fp32_export_matches_jax_at_any_batch_size(tmp_path, tiny_model_dir, fmt):
  report = export_workdir(tiny_model_dir, fmt, tmp_path / fmt, latency_repeats=5)
  _, written = _check_directory(tmp_path / fmt, fmt, tiny_model_dir)
  assert written == report
  assert report["top1_agreement"] >= 0.999 and report["max_abs_logit_diff"] < 1e-4
  assert report["accuracy_exported"] == report["accuracy_jax"] > 0.8
  model = load_exported(tmp_path / fmt)
  for batch in (1, 3, 8):
    images = _images(batch, seed=batch)
    outputs = model.predict(images)
    logits, embedding = _jax_outputs(tiny_model_dir, images)
    assert outputs["logits"].shape == (batch, 4) and outputs["embedding"].shape == (batch, 128)
    np.testing.assert_allclose(outputs["logits"], logits, atol=1e-4)
    np.testing.assert_allclose(outputs["embedding"], embedding, atol=1e-4)
    # The graph applies the temperature fitted on validation at the end of training.
    temperature = json.loads((tmp_path / fmt / "export.json").read_text())["task"]["temperature"]
    scaled = logits / temperature
    expected = np.exp(scaled - scaled.max(1, keepdims=True))
    np.testing.assert_allclose(outputs["probabilities"], expected / expected.sum(1, keepdims=True),
                               atol=1e-4)


def test_the_model_files_declare_uint8_input_with_a_free_batch_dimension(tmp_path, tiny_model_dir):
  import onnxruntime as ort  # pylint: disable=import-outside-toplevel
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel

  export_workdir(tiny_model_dir, "onnx", tmp_path / "onnx", latency_repeats=2, max_examples=8)
  session = ort.InferenceSession(str(tmp_path / "onnx/model.onnx"))
  (onnx_input,) = session.get_inputs()
  assert onnx_input.name == "images" and onnx_input.type == "tensor(uint8)"
  assert not isinstance(onnx_input.shape[0], int) and onnx_input.shape[1:] == [16, 16, 1]
  assert [o.name for o in session.get_outputs()] == ["logits", "probabilities", "embedding"]

  export_workdir(tiny_model_dir, "tflite", tmp_path / "tflite", latency_repeats=2, max_examples=8)
  runner = Interpreter(str(tmp_path / "tflite/model.tflite")).get_signature_runner()
  details = runner.get_input_details()["images"]
  assert details["dtype"] == np.uint8 and list(details["shape_signature"]) == [-1, 16, 16, 1]
  with pytest.raises(ValueError, match="expected uint8 images"):
    load_exported(tmp_path / "tflite").predict(_images(2).astype(np.float32))


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_int8_export_is_smaller_and_states_its_accuracy_drop(tmp_path, tiny_model_dir, fmt):
  report = export_workdir(tiny_model_dir, fmt, tmp_path / "int8", int8=True,
                          calibration_examples=64, latency_repeats=5)
  info, _ = _check_directory(tmp_path / "int8", fmt, tiny_model_dir, int8=True)
  assert report["thresholds"]["min_top1_agreement"] == export_lib.MIN_AGREEMENT_INT8
  assert report["accuracy_drop"] == pytest.approx(
      report["accuracy_jax"] - report["accuracy_exported"])
  assert report["top1_agreement"] >= export_lib.MIN_AGREEMENT_INT8
  # int8 weights: about a quarter of the fp32 parameters (128*64 + ... floats).
  assert report["size_bytes"] < 0.5 * report["size_bytes_jax"]
  assert info["quantization"] == {"tflite": "full_integer", "onnx": "static_qdq"}[fmt]
  # The int8 graph has a static batch of 1 (convolutions fused with their bias and activation);
  # its runtime answers any batch, piece by piece, as the model's own batch-1 calls do.
  model = load_exported(tmp_path / "int8")
  images = _images(5, seed=3)
  batched = model.predict(images)
  assert batched["logits"].shape == (5, 4) and batched["embedding"].shape == (5, 128)
  for index in (0, 4):
    np.testing.assert_array_equal(model.predict(images[index:index + 1])["logits"][0],
                                  batched["logits"][index])
  if fmt == "tflite":
    from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel
    details = Interpreter(str(tmp_path / "int8/model.tflite")).get_input_details()[0]
    assert list(details["shape_signature"]) == [1, 16, 16, 1]
    # Fused: no BROADCAST_TO, MAXIMUM or MINIMUM (bias adds and ReLU clips) is left as an op.
    operations = {op["op_name"] for op in Interpreter(
        str(tmp_path / "int8/model.tflite"))._get_ops_details()}  # pylint: disable=protected-access
    assert not operations & {"BROADCAST_TO", "MAXIMUM", "MINIMUM"}, operations
  else:
    import onnxruntime as ort  # pylint: disable=import-outside-toplevel
    (onnx_input,) = ort.InferenceSession(str(tmp_path / "int8/model.onnx")).get_inputs()
    assert onnx_input.shape == [1, 16, 16, 1]


def test_the_command_writes_the_directory_and_fails_loudly_on_disagreement(
    tmp_path, tiny_model_dir, monkeypatch):
  out = tmp_path / "cli"
  result = run_module("experiments.export", f"--workdir={tiny_model_dir}", "--format=onnx",
                      f"--out={out}", "--version=v7")
  assert json.loads(result.stdout)["top1_agreement"] >= 0.999
  assert json.loads((out / "export.json").read_text())["version"] == "v7"

  # A runtime that answers wrongly half the time must fail the check, with the report written.
  original = ExportedModel.predict

  def broken(self, images):
    outputs = original(self, images)
    logits = outputs["logits"].copy()
    logits[::2] = -logits[::2]
    return {**outputs, "logits": logits}

  monkeypatch.setattr(ExportedModel, "predict", broken)
  with pytest.raises(ParityError, match="top-1 agreement"):
    export_workdir(tiny_model_dir, "stablehlo", tmp_path / "bad", latency_repeats=1)
  report = json.loads((tmp_path / "bad/export_report.json").read_text())
  assert not report["passed"] and report["top1_agreement"] < 0.999 and "error" in report


@pytest.mark.parametrize("args, message", [
    (("--format=onnx",), "model_card.json does not exist"),
    (("--format=coreml",), "--format=coreml is not a known format"),
    (("--format=stablehlo", "--int8"), "--int8 is for --format=tflite or --format=onnx"),
])
def test_user_mistakes_get_one_line(tmp_path, tiny_model_dir, args, message):
  workdir = tmp_path / "nowhere" if "onnx" in args[0] else tiny_model_dir
  result = run_module("experiments.export", f"--workdir={workdir}", f"--out={tmp_path / 'out'}",
                      *args, check=False)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
  assert not (tmp_path / "out").exists()


def test_an_unrelated_out_directory_is_never_overwritten(tmp_path, tiny_model_dir):
  out = tmp_path / "precious"
  out.mkdir()
  (out / "notes.txt").write_text("keep me")
  with pytest.raises(Exception, match="not an export"):
    export_workdir(tiny_model_dir, "stablehlo", out)
  assert (out / "notes.txt").read_text() == "keep me"


def test_latency_comparison_times_every_runtime(tmp_path, tiny_model_dir):
  rows = compare_latency(tiny_model_dir, tmp_path, repeats=3, max_examples=16, formats=("onnx",))
  assert [(r["runtime"], r["precision"]) for r in rows] == [
      ("JAX (XLA:CPU, jit)", "fp32"), ("ONNX Runtime", "fp32"), ("ONNX Runtime", "int8")]
  assert all(r["latency_ms_per_image"] > 0 and r["size_bytes"] > 0 for r in rows)
  table = format_latency_table(rows)
  assert table.count("\n") == 4 and "ONNX Runtime | int8" in table


def test_a_full_integer_model_that_litert_cannot_run_falls_back_to_int8_matmuls(
    tmp_path, tiny_model_dir, monkeypatch):
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel
  attempts = []

  def first_attempt_crashes(what, function, *args):
    attempts.append(args[3:])  # () for full integer, (True,) for matmuls only
    if len(attempts) == 1:
      raise RuntimeError(f"{what} crashed: its process died")
    return function(*args)

  monkeypatch.setattr(converters, "run_isolated", first_attempt_crashes)
  report = export_workdir(tiny_model_dir, "tflite", tmp_path / "int8", int8=True,
                          calibration_examples=16, latency_repeats=1)
  assert attempts == [(), (True,)] and report["passed"]
  assert json.loads((tmp_path / "int8/export.json").read_text())["quantization"] == "matmuls_int8"
  interpreter = Interpreter(str(tmp_path / "int8/model.tflite"))
  tensors = interpreter.get_tensor_details()
  operations = interpreter._get_ops_details()  # pylint: disable=protected-access
  int8_ops = {op["op_name"] for op in operations if tensors[op["outputs"][0]]["dtype"] == np.int8}
  assert int8_ops and int8_ops <= {*converters.TFLITE_MATMUL_OPS, "QUANTIZE"}, int8_ops
