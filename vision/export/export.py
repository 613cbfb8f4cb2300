"""Exporting a model directory, and checking the export against the JAX model.

    report = export_workdir("runs/fashion_mnist", "onnx", "exports/fmnist_onnx", int8=False)
    report["top1_agreement"], report["max_abs_logit_diff"], report["latency_ms_per_image"]

OUT receives the model file, `export.json` (format, input spec, class names,
version; the contract the server reads) and `export_report.json`. The check
runs the exported model in its own runtime on the validation split of the data
the model was trained on and compares it with the JAX model fed by the training
pipeline's own preprocessing. It raises `ParityError` (after writing the report)
when top-1 agreement is below `MIN_AGREEMENT_FP32` (0.999), or for int8 below
`MIN_AGREEMENT_INT8` (0.97) or with an accuracy drop above `MAX_ACCURACY_DROP_INT8`.
A multi-task model exports one output per head (`logits_HEAD`); each is checked,
the report gives each head's figures under `heads` and the worst at the top.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import shutil
import tempfile
from typing import Iterable, Iterator

from flax import nnx
import jax
import numpy as np

from vision import config as config_lib
from vision import tasks
from vision.checkpoint import ModelCard, load_model
from vision.models import layers
from vision.config import ConfigError
from vision.data import open_from_config, pipeline
from vision.data.sources import RecordSource
from vision.evaluate.evaluate import card_spec
from vision.export import converters
from vision.export.latency import DEFAULT_REPEATS, median_latency_ms
from vision.export.runtime import (EXPORT_JSON, FORMATS, MODEL_FILES, load_exported)
from vision.export.serving import INPUT_NAME, serving_function
from vision.files import write_text_atomically

log = logging.getLogger(__name__)

REPORT_JSON = "export_report.json"
MIN_AGREEMENT_FP32 = 0.999
MIN_AGREEMENT_INT8 = 0.97
MAX_ACCURACY_DROP_INT8 = 0.02
CALIBRATION_EXAMPLES = 256
_BATCH = 256
RUNTIMES = {"saved_model": "TensorFlow SavedModel", "tflite": "LiteRT (TFLite)",
            "onnx": "ONNX Runtime", "stablehlo": "jax.export (StableHLO)"}


class ParityError(RuntimeError):
  """The exported model disagrees with the JAX model beyond the threshold."""


# ------------------------------------------------------------------------- data

def _open_splits(workdir: pathlib.Path, data_source: str | None):
  """(dataset, config.data) of the data the model was trained on; `data_source` overrides."""
  try:
    config = config_lib.load_resolved(workdir)
  except ConfigError:
    if data_source is None:
      raise ConfigError(
          f"{workdir / config_lib.RESOLVED_CONFIG} does not exist, so the validation data is "
          "unknown: pass --data=SOURCE (e.g. idx:/usr/share/datasets/fashion-mnist)") from None
    config = config_lib.defaults()
  if data_source is not None:
    config.data.source = data_source
  dataset, _ = open_from_config(config.data)
  return dataset, config.data


def _batches(records: RecordSource, spec: pipeline.ImageSpec,
             indices: np.ndarray) -> Iterator[dict[str, np.ndarray]]:
  """Host batches (uint8 images of the model's size, labels) at `indices`, `_BATCH` at a time."""
  for start in range(0, len(indices), _BATCH):
    yield pipeline.LoadBatch(records, spec).map(indices[start:start + _BATCH])


def calibration_images(records: RecordSource, spec: pipeline.ImageSpec,
                       count: int = CALIBRATION_EXAMPLES, seed: int = 0) -> np.ndarray:
  """`count` training images (uint8, model size) drawn at random: int8's calibration set."""
  chosen = np.random.default_rng(seed).choice(len(records), min(count, len(records)),
                                              replace=False)
  return np.concatenate([batch["image"] for batch in _batches(records, spec, np.sort(chosen))])


# ---------------------------------------------------------------------- parity

def jax_logits_function(model: nnx.Module, card: ModelCard):
  """`uint8 images -> logits` as training and evaluation compute them (numpy Normalise, model())."""
  graphdef, state = nnx.split(model)
  normalise = pipeline.Normalise(card_spec(card))

  @jax.jit
  def forward(state, images):
    return nnx.merge(graphdef, state)(images)

  def logits(images: np.ndarray) -> np.ndarray:
    count = len(images)
    size = 1 if count == 1 else _BATCH  # one compiled shape for the check, one for latency
    batch = pipeline.pad_batch({"image": images, "label": np.zeros(count, np.int32)}, size)
    return np.asarray(forward(state, normalise.map(batch)["image"]))[:count]

  return logits


def _output_stats(reference: np.ndarray, exported: np.ndarray) -> dict:
  return {"top1_agreement": float(np.mean(exported.argmax(-1) == reference.argmax(-1))),
          "max_abs_logit_diff": float(np.max(np.abs(exported - reference))),
          "mean_abs_logit_diff": float(np.mean(np.abs(exported - reference)))}


def parity_report(jax_logits, exported, batches: Iterable[dict[str, np.ndarray]], task) -> dict:
  """Agreement, accuracies and logit differences of `exported` vs JAX over `batches`.

  Each of the task's outputs (one per head) is compared on its own; with several,
  `heads` holds each one's figures and the top level the worst of them. Accuracies
  are the task's (`report(...)["accuracy"]`, a multi-task model's mean over heads).
  """
  reference, outputs, targets, exported_outputs = [], [], [], []
  embedding_dims, finite = set(), True
  # Batches of _BATCH and a smaller last one: the check also exercises the dynamic batch size.
  for batch in batches:
    images = batch["image"]
    produced = exported.predict(images)
    shapes = {name: value.shape for name, value in produced.items()}
    if any(shape[0] != len(images) for shape in shapes.values()):
      raise ParityError(f"the exported model returned {shapes} for {len(images)} images")
    reference.append(jax_logits(images))
    outputs.append(task.join(produced))
    exported_outputs.append({name: produced[name] for name in task.output_names})
    targets.append(task.targets(batch))
    embedding_dims.add(produced["embedding"].shape[1:])
    finite &= bool(all(np.isfinite(value).all() for value in produced.values()))
  reference, logits = np.concatenate(reference), np.concatenate(outputs)
  targets = jax.tree.map(lambda *parts: np.concatenate(parts), *targets)
  if logits.shape != reference.shape or len(embedding_dims) != 1:
    raise ParityError(f"the exported model returned logits of shape {logits.shape[1:]} and "
                      f"embeddings of shapes {sorted(embedding_dims)}; the JAX model gives "
                      f"logits {reference.shape[1:]}")
  # Every output as the exported graph computes it (the probabilities too, temperature and all).
  exported_outputs = {name: np.concatenate([o[name] for o in exported_outputs])
                      for name in task.output_names}
  heads = {name: _output_stats(task.outputs(reference)[name], exported_outputs[name])
           for name in task.output_names}
  accuracy_exported = task.report(targets, task.probabilities(logits))["accuracy"]
  accuracy_jax = task.report(targets, task.probabilities(reference))["accuracy"]
  report = {
      "num_examples": int(len(logits)),
      "top1_agreement": min(h["top1_agreement"] for h in heads.values()),
      "accuracy_exported": accuracy_exported,
      "accuracy_jax": accuracy_jax,
      "accuracy_drop": accuracy_jax - accuracy_exported,
      "max_abs_logit_diff": max(h["max_abs_logit_diff"] for h in heads.values()),
      "mean_abs_logit_diff": max(h["mean_abs_logit_diff"] for h in heads.values()),
      "embedding_dim": int(embedding_dims.pop()[-1]),
      "finite": finite,
  }
  if len(heads) > 1:
    report["heads"] = heads
  return report


def check_thresholds(report: dict) -> str | None:
  """Why the export fails its parity check, or None when it passes."""
  if not report["finite"]:
    return "the exported model returns NaN or inf"
  agreement = report["top1_agreement"]
  if not report["int8"]:
    if agreement < MIN_AGREEMENT_FP32:
      return (f"top-1 agreement with the JAX model is {agreement:.4%} on {report['num_examples']} "
              f"{report['split']} images, below {MIN_AGREEMENT_FP32:.1%} "
              f"(max abs logit diff {report['max_abs_logit_diff']:.3g}); see {REPORT_JSON}")
    return None
  if agreement < MIN_AGREEMENT_INT8 or report["accuracy_drop"] > MAX_ACCURACY_DROP_INT8:
    return (f"int8 top-1 agreement {agreement:.2%} (min {MIN_AGREEMENT_INT8:.0%}), accuracy "
            f"drop {report['accuracy_drop']:+.2%} (max {MAX_ACCURACY_DROP_INT8:.0%}) on "
            f"{report['num_examples']} {report['split']} images; see {REPORT_JSON}")
  return None


# ------------------------------------------------------------------------ export

def _prepare_out(out: pathlib.Path) -> None:
  """An empty OUT, or an earlier export directory (replaced); anything else is refused."""
  if out.exists() and not out.is_dir():
    raise ConfigError(f"--out={out} is a file; give a directory for the export")
  if out.is_dir() and any(out.iterdir()):
    if not (out / EXPORT_JSON).exists():
      raise ConfigError(f"--out={out} is a non-empty directory that is not an export "
                        f"(no {EXPORT_JSON}); choose a new or empty directory")
    for name in list(MODEL_FILES.values()) + [EXPORT_JSON, REPORT_JSON]:
      path = out / name
      if path.is_dir():
        shutil.rmtree(path)
      else:
        path.unlink(missing_ok=True)
  out.mkdir(parents=True, exist_ok=True)


def content_hash(path: pathlib.Path) -> str:
  """A short sha256 of a file, or of a directory's files and their relative paths."""
  digest = hashlib.sha256()
  files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
  for file in files:
    digest.update(str(file.relative_to(path if path.is_dir() else path.parent)).encode())
    digest.update(file.read_bytes())
  return digest.hexdigest()[:12]


def write_model(serving, fmt: str, out: pathlib.Path, *,
                calibration: np.ndarray | None) -> tuple[pathlib.Path, str]:
  """Writes OUT/<model file> for `fmt` (int8 when `calibration` is given).

  Returns its path and how it was quantized ("none", "full_integer",
  "integer_with_float_fallback" or, for ONNX, "static_qdq").
  """
  target = out / MODEL_FILES[fmt]
  if fmt == "stablehlo":
    if calibration is not None:
      raise ConfigError("--int8 is for --format=tflite or --format=onnx (StableHLO stays fp32)")
    converters.write_stablehlo(serving, target)
    return target, "none"
  if fmt == "saved_model":
    if calibration is not None:
      raise ConfigError("--int8 is for --format=tflite or --format=onnx (a SavedModel stays fp32)")
    converters.write_saved_model(serving, target)
    return target, "none"
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    converters.write_saved_model(serving, tmp / "saved_model")
    if fmt == "tflite":
      return target, converters.write_tflite(tmp / "saved_model", target, calibration=calibration)
    converters.write_tflite(tmp / "saved_model", tmp / "model.tflite")
    if calibration is None:
      converters.write_onnx(tmp / "model.tflite", target, serving.output_names)
    else:
      converters.write_onnx(tmp / "model.tflite", tmp / "fp32.onnx", serving.output_names)
      converters.write_onnx_int8(tmp / "fp32.onnx", target, calibration)
  return target, "none" if calibration is None else "static_qdq"


def export_info(card: ModelCard, task, fmt: str, model_file: pathlib.Path, *, int8: bool,
                quantization: str, version: str | None, workdir: pathlib.Path,
                output_names: tuple[str, ...]) -> dict:
  return {
      "format": fmt, "model_file": model_file.name, "int8": int8, "quantization": quantization,
      "arch": card.arch,
      "version": version or content_hash(model_file),
      "class_names": list(card.class_names),
      "input": {"name": INPUT_NAME, "dtype": "uint8", "layout": "NHWC",
                "height": card.image_size, "width": card.image_size, "channels": card.channels},
      "outputs": list(output_names),
      "task": task.to_json(),  # what the outputs mean, thresholds included (vision.tasks)
      "preprocessing": {"scale": "1/255", "mean": list(card.mean), "std": list(card.std)},
      "num_classes": card.num_classes,
      "source_workdir": str(workdir.absolute()),
  }


def export_workdir(workdir: str | os.PathLike, fmt: str, out: str | os.PathLike, *,
                   int8: bool = False, version: str | None = None, data: str | None = None,
                   max_examples: int | None = None,
                   calibration_examples: int = CALIBRATION_EXAMPLES,
                   latency_repeats: int = DEFAULT_REPEATS) -> dict:
  """Exports, checks parity on the validation split, writes OUT; returns the report.

  Raises ParityError (after writing OUT/export_report.json) when the check fails.
  """
  workdir, out = pathlib.Path(workdir), pathlib.Path(out)
  if fmt not in FORMATS:
    raise ConfigError(f"--format={fmt} is not a known format; choose one of {', '.join(FORMATS)}")
  if int8 and fmt not in ("tflite", "onnx"):
    raise ConfigError(f"--int8 is for --format=tflite or --format=onnx, not {fmt}")
  model, card = load_model(workdir)
  task = tasks.load(workdir)
  # Exported graphs keep XLA's own convolution: TFLite and ONNX have native conv kernels, and
  # the CPU matmul lowering's reshapes do not survive tf2onnx with a free batch dimension.
  layers.set_conv_impl(model, "lax")
  dataset, data_config = _open_splits(workdir, data)
  spec = card_spec(card)
  records = pipeline.limit_examples(dataset.split(data_config.val_split), max_examples)
  if not len(records):
    raise ConfigError(f"the {data_config.val_split} split is empty: nothing to check the export on")
  calibration = (calibration_images(dataset.split(data_config.train_split), spec,
                                    calibration_examples) if int8 else None)
  _prepare_out(out)

  log.info("exporting %s as %s%s to %s", workdir, fmt, " (int8)" if int8 else "", out)
  serving = serving_function(model, card, task)
  model_file, quantization = write_model(serving, fmt, out, calibration=calibration)
  info = export_info(card, task, fmt, model_file, int8=int8, quantization=quantization,
                     version=version, workdir=workdir, output_names=serving.output_names)
  write_text_atomically(out / EXPORT_JSON, json.dumps(info, indent=2))

  log.info("checking %s against JAX on %d %s images", fmt, len(records), data_config.val_split)
  exported = load_exported(out)
  jax_logits = jax_logits_function(model, card)
  report = {"format": fmt, "int8": int8, "runtime": RUNTIMES[fmt], "version": info["version"],
            "split": data_config.val_split,
            **parity_report(jax_logits, exported,
                            _batches(records, spec, np.arange(len(records))), task)}
  first_image = pipeline.read_batch(records, np.arange(1), spec)[0]
  report["size_bytes"] = converters.tree_size(model_file)
  weights = nnx.state(model, nnx.Not(nnx.RngState))
  report["size_bytes_jax"] = int(sum(w.nbytes for w in jax.tree.leaves(weights)))
  report["latency_ms_per_image"] = median_latency_ms(exported.predict, first_image,
                                                     repeats=latency_repeats)
  report["latency_ms_per_image_jax"] = median_latency_ms(jax_logits, first_image,
                                                         repeats=latency_repeats)
  report["thresholds"] = ({"min_top1_agreement": MIN_AGREEMENT_INT8,
                           "max_accuracy_drop": MAX_ACCURACY_DROP_INT8} if int8 else
                          {"min_top1_agreement": MIN_AGREEMENT_FP32})
  problem = check_thresholds(report)
  report["passed"] = problem is None
  if problem:
    report["error"] = problem
  write_text_atomically(out / REPORT_JSON, json.dumps(report, indent=2))
  if problem:
    raise ParityError(problem)
  return report
