"""Every model family, and every shipped config's network, exports to TFLite and ONNX matching JAX.

The networks are built as training builds them (`build_model` from a
config) but not trained: conversion and parity do not depend on the weights,
and fp32 parity is exact to ~1e-6 either way. The parity check runs on 16
real Fashion-MNIST validation images. The other formats (SavedModel,
StableHLO) run on the quickstart's network and ViT. int8 parity needs a
trained model to be meaningful: it is in tests/test_export.py (small CNN) and in
the README's matrix (`experiments.export_matrix`, every family); here the int8
models of the families whose ops once broke the int8 path are made and run over
the sample.
"""

from __future__ import annotations

import json
import pathlib

import pytest

from conftest import REPO
from vision import config as config_lib
from vision import tasks
from vision.checkpoint import write_model_dir
from vision.data import open_from_config
from vision.export import export as export_lib
from vision.export.matrix import SMALLEST_VARIANTS, family, family_config
from vision.models import MODELS
from vision.train.build import build_model

pytestmark = pytest.mark.slow
PARITY_IMAGES = 16
# Arguments that give a shipped config its own network without outside files (a teacher run,
# imported weights); every other config is read with `smoke`.
CONFIG_ARGS = {"distill_fashion_mnist": "smoke,alone",
               "transfer_mobilenet_fashion_mnist": "smoke,scratch"}


def _shipped_config(path: pathlib.Path):
  return config_lib.from_file(path, CONFIG_ARGS.get(path.stem, "smoke"))


def _network(config) -> tuple:
  """What makes two configs' networks the same: architecture, options and input."""
  model, data = config.model, config.data
  return (model.name, tuple(model.widths), model.hidden, model.stem, model.dtype,
          data.image_size or 28, data.channels or 1)


def _cases() -> dict[str, object]:
  """Each shipped config's network, then each family's smallest variant not already among them."""
  cases, seen = {}, {}
  # The quickstart first: configs built on its network are then covered by its case.
  for path in sorted((REPO / "configs").glob("*.py"), key=lambda p: (p.name != "fashion_mnist.py",
                                                                     p.name)):
    config = _shipped_config(path)
    if (key := _network(config)) in seen:
      continue  # e.g. the sweep's base is the quickstart's network
    seen[key] = cases[f"configs/{path.name}"] = config
  for arch in SMALLEST_VARIANTS.values():
    config = family_config(arch)
    if _network(config) not in seen:
      seen[_network(config)] = cases[arch] = config
  return cases


CASES = _cases()


@pytest.fixture(scope="module", params=list(CASES))
def source(request, tmp_path_factory) -> export_lib.ExportSource:
  """The case's network (not trained) as a model directory, opened for export once."""
  config = config_lib.validate(CASES[request.param].copy_and_resolve_references())
  workdir = tmp_path_factory.mktemp("model")
  dataset, spec = open_from_config(config.data)
  model, card = build_model(config, tasks.from_config(config, dataset), spec)
  write_model_dir(workdir, model, card)
  config_lib.save_resolved(config, workdir)
  return export_lib.ExportSource.open(workdir, tmp_path_factory.mktemp("intermediates"),
                                      max_examples=PARITY_IMAGES)


def test_the_cases_cover_every_family_and_every_shipped_config():
  # Test-only models (tests/unconvertible_models.py) may be registered by another test file.
  ours = [arch for arch, builder in MODELS.items() if builder.__module__.startswith("vision.")]
  assert {family(arch) for arch in ours} == set(SMALLEST_VARIANTS)
  covered = {family(config.model.name) for config in CASES.values()}
  assert covered == set(SMALLEST_VARIANTS)
  shipped = {f"configs/{p.name}" for p in (REPO / "configs").glob("*.py")}
  # Each config is a case, or has the same network as one (the sweep's is the quickstart's).
  assert all(name in CASES or any(_network(_shipped_config(REPO / name)) == _network(c)
                                  for c in CASES.values()) for name in shipped)
  # The quickstart's network pools a 7×7 map (28 → 14 → 7 → 3): the path that once broke export.
  quickstart = CASES["configs/fashion_mnist.py"]
  assert tuple(quickstart.model.widths) == (24, 48, 96) and quickstart.data.image_size is None


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_every_family_exports_fp32_matching_jax(source, fmt, tmp_path):
  report = export_lib.export_from(source, fmt, tmp_path / fmt, latency_repeats=1)
  assert report["passed"] and report["num_examples"] == PARITY_IMAGES
  assert report["top1_agreement"] == 1.0 and report["finite"]
  assert report["max_abs_logit_diff"] < 1e-4, report


@pytest.mark.parametrize("source", ["configs/fashion_mnist.py", "vit_ti16"], indirect=True)
@pytest.mark.parametrize("fmt", ["saved_model", "stablehlo"])
def test_the_other_formats_match_jax(source, fmt, tmp_path):
  report = export_lib.export_from(source, fmt, tmp_path / fmt, latency_repeats=1)
  assert report["passed"] and report["top1_agreement"] == 1.0
  assert report["max_abs_logit_diff"] < 1e-4, report


# Networks with LayerNorm quantize only convolutions and matmuls (ViT's full-integer TFLite model
# aborted in LiteRT); EfficientNet-B0's full-integer conversion crashed the converter on the
# free-batch graph and completes on the batch-1 one.
INT8_CASES = [("vit_ti16", "tflite", "matmuls_int8"),
              ("efficientnet_b0", "tflite", "full_integer"),
              ("vit_ti16", "onnx", "static_qdq_matmuls")]


@pytest.mark.parametrize("source, fmt, quantization", INT8_CASES, indirect=["source"])
def test_int8_models_are_made_and_run_for_the_hard_families(source, fmt, quantization, tmp_path):
  out = tmp_path / fmt
  try:
    report = export_lib.export_from(source, fmt, out, int8=True, calibration_examples=16,
                                    latency_repeats=1)
  except export_lib.ParityError:  # untrained weights: agreement is not the point here
    report = json.loads((out / "export_report.json").read_text())
  info = json.loads((out / "export.json").read_text())
  assert report["num_examples"] == PARITY_IMAGES and report["finite"]
  assert info["input"]["batch_size"] == 1 and info["quantization"] == quantization
