"""Exporting a model directory, and checking the export against the JAX model.

    report = export_workdir("runs/fashion_mnist", "onnx", "exports/fmnist_onnx", int8=False)
    report["top1_agreement"], report["max_abs_logit_diff"], report["latency_ms_per_image"]

OUT receives the model file, `export.json` (format, input spec, class names,
version; the contract the server reads) and `export_report.json`. The check
runs the exported model in its own runtime on a fixed random sample of the
validation split of the data the model was trained on (`DEFAULT_MAX_EXAMPLES`,
2,000 images, unless `max_examples` says otherwise), streamed in batches, and
compares it with the JAX model fed by the training pipeline's own
preprocessing. It raises `ParityError` (after writing the report) when top-1
agreement is below `MIN_AGREEMENT_FP32` (0.999), or for int8 below
`MIN_AGREEMENT_INT8` (0.97) or with an accuracy drop above
`MAX_ACCURACY_DROP_INT8`, and `ExportError` (one line: format, op or reason,
what to do) when a converter fails or the exported model does not run.
A multi-task model exports one output per head (`logits_HEAD`); each is checked,
the report gives each head's figures under `heads` and the worst at the top.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import shutil
import tempfile
import time
from typing import Iterable, Iterator, NamedTuple

from flax import nnx
import jax
import numpy as np

from vision import config as config_lib
from vision import tasks
from vision.checkpoint import ModelCard, load_model
from vision.compress import quant
from vision.models import layers
from vision.config import ConfigError
from vision.data import open_from_config, pipeline
from vision.data.sources import RecordSource
from vision.evaluate.evaluate import card_spec
from vision.export import converters
from vision.export.errors import converter_step
from vision.export.fold import fold_batch_norms
from vision.export.latency import DEFAULT_REPEATS, median_latency_ms
from vision.export.runtime import (EXPORT_JSON, FORMATS, MODEL_FILES, load_exported)
from vision.export.serving import INPUT_NAME, ServingFunction, serving_function
from vision.files import write_text_atomically

log = logging.getLogger(__name__)

REPORT_JSON = "export_report.json"
MIN_AGREEMENT_FP32 = 0.999
MIN_AGREEMENT_INT8 = 0.97
MAX_ACCURACY_DROP_INT8 = 0.02
CALIBRATION_EXAMPLES = 256
# Validation images the parity check runs on unless told otherwise (None or 0: all of them).
DEFAULT_MAX_EXAMPLES = 2000
_BATCH = 64
_PROGRESS_SECONDS = 10.0
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


class _OutputTotals:
  """Running sums of one output's agreement and logit differences (nothing per image kept)."""

  def __init__(self):
    self.count = self.agree = 0
    self.max_abs = self.sum_abs = 0.0
    self.classes = 0

  def add(self, reference: np.ndarray, exported: np.ndarray) -> None:
    difference = np.abs(exported - reference)
    self.count += len(reference)
    self.classes = reference.shape[-1]
    self.agree += int(np.sum(exported.argmax(-1) == reference.argmax(-1)))
    self.max_abs = max(self.max_abs, float(difference.max(initial=0.0)))
    self.sum_abs += float(difference.sum())

  def stats(self) -> dict:
    return {"top1_agreement": self.agree / self.count, "max_abs_logit_diff": self.max_abs,
            "mean_abs_logit_diff": self.sum_abs / (self.count * max(self.classes, 1))}


class _ParityTotals:
  """Running sums over the checked batches, per output of the task: nothing per image is kept.

  The task's accuracy (`report(...)["accuracy"]`) is a mean over examples for
  every task (a multi-task model's: over heads and examples alike), so the
  batch-weighted sum of each batch's accuracy is the accuracy of the whole sample.
  """

  def __init__(self, task):
    self.task = task
    self.count = 0
    self.correct_exported = self.correct_jax = 0.0
    self.outputs = {name: _OutputTotals() for name in task.output_names}
    self.logit_shapes, self.embedding_dims, self.finite = set(), set(), True

  def add(self, reference: np.ndarray, produced: dict, batch: dict) -> None:
    logits = self.task.join(produced)
    self.logit_shapes.add((logits.shape[1:], reference.shape[1:]))
    self.embedding_dims.add(produced["embedding"].shape[1:])
    self.finite &= bool(all(np.isfinite(value).all() for value in produced.values()))
    if logits.shape != reference.shape:
      return
    # Every output as the exported graph computes it (the probabilities too, temperature and all).
    expected = self.task.outputs(reference)
    for name in self.task.output_names:
      self.outputs[name].add(expected[name], np.asarray(produced[name]))
    targets = self.task.targets(batch)
    count = len(reference)
    self.count += count
    self.correct_exported += count * self.task.report(
        targets, self.task.probabilities(logits))["accuracy"]
    self.correct_jax += count * self.task.report(
        targets, self.task.probabilities(reference))["accuracy"]


def parity_report(jax_logits, exported, batches: Iterable[dict[str, np.ndarray]], task, *,
                  total: int | None = None) -> dict:
  """Agreement, accuracies and logit differences of `exported` vs JAX over `batches`.

  Streams: each batch is compared and dropped. Each of the task's outputs (one
  per head) is compared on its own; with several, `heads` holds each one's
  figures and the top level the worst of them. Accuracies are the task's (a
  multi-task model's: the mean over heads). With `total` (the number of images),
  logs progress every few seconds.
  """
  totals, seen = _ParityTotals(task), 0
  started = last_shown = time.monotonic()
  # Batches of _BATCH and a smaller last one: the check also exercises the dynamic batch size.
  for batch in batches:
    images = batch["image"]
    produced = exported.predict(images)
    shapes = {name: value.shape for name, value in produced.items()}
    if any(shape[0] != len(images) for shape in shapes.values()):
      raise ParityError(f"the exported model returned {shapes} for {len(images)} images")
    totals.add(jax_logits(images), produced, batch)
    seen += len(images)
    now = time.monotonic()
    if total and (now - last_shown >= _PROGRESS_SECONDS or seen == total):
      agree = min(o.agree for o in totals.outputs.values())
      log.info("parity check: %d/%d images, top-1 agreement %.2f%% (%.0f s)", seen, total,
               100 * agree / max(totals.count, 1), now - started)
      last_shown = now
  if (len(totals.logit_shapes) != 1 or len(totals.embedding_dims) != 1
      or any(got != want for got, want in totals.logit_shapes)):
    raise ParityError(f"the exported model returned logits of shapes "
                      f"{sorted(s for s, _ in totals.logit_shapes)} and embeddings of shapes "
                      f"{sorted(totals.embedding_dims)}; the JAX model gives logits "
                      f"{sorted(r for _, r in totals.logit_shapes)}")
  heads = {name: output.stats() for name, output in totals.outputs.items()}
  accuracy_exported = totals.correct_exported / totals.count
  accuracy_jax = totals.correct_jax / totals.count
  report = {
      "num_examples": totals.count,
      "top1_agreement": min(h["top1_agreement"] for h in heads.values()),
      "accuracy_exported": accuracy_exported,
      "accuracy_jax": accuracy_jax,
      "accuracy_drop": accuracy_jax - accuracy_exported,
      "max_abs_logit_diff": max(h["max_abs_logit_diff"] for h in heads.values()),
      "mean_abs_logit_diff": max(h["mean_abs_logit_diff"] for h in heads.values()),
      "embedding_dim": int(totals.embedding_dims.pop()[-1]),
      "finite": totals.finite,
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

def check_request(fmt: str, int8: bool) -> None:
  """Raises ConfigError for a format that does not exist or has no int8 route."""
  if fmt not in FORMATS:
    raise ConfigError(f"--format={fmt} is not a known format; choose one of {', '.join(FORMATS)}")
  if int8 and fmt not in ("tflite", "onnx"):
    raise ConfigError(f"--int8 is for --format=tflite or --format=onnx, not {fmt}")


def _check_out(out: pathlib.Path) -> None:
  """OUT may be new, empty, or an earlier export (replaced once the new one is made)."""
  if out.exists() and not out.is_dir():
    raise ConfigError(f"--out={out} is a file; give a directory for the export")
  if out.is_dir() and any(out.iterdir()) and not (out / EXPORT_JSON).exists():
    raise ConfigError(f"--out={out} is a non-empty directory that is not an export "
                      f"(no {EXPORT_JSON}); choose a new or empty directory")


def _replace_out(out: pathlib.Path, model_file: pathlib.Path) -> pathlib.Path:
  """Empties OUT of an earlier export's files, then moves the new model file in."""
  _check_out(out)
  for name in list(MODEL_FILES.values()) + [EXPORT_JSON, REPORT_JSON]:
    path = out / name
    if path.is_dir():
      shutil.rmtree(path)
    else:
      path.unlink(missing_ok=True)
  out.mkdir(parents=True, exist_ok=True)
  return pathlib.Path(shutil.move(str(model_file), str(out / model_file.name)))


def content_hash(path: pathlib.Path) -> str:
  """A short sha256 of a file, or of a directory's files and their relative paths."""
  digest = hashlib.sha256()
  files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
  for file in files:
    digest.update(str(file.relative_to(path if path.is_dir() else path.parent)).encode())
    digest.update(file.read_bytes())
  return digest.hexdigest()[:12]


class WrittenModel(NamedTuple):
  """What `write_model` wrote: the model file, how it was quantized, its graph's batch size."""
  path: pathlib.Path
  quantization: str  # "none"; TFLite: "full_integer", "integer_with_float_fallback",
  #                    "matmuls_int8"; ONNX: "static_qdq", "static_qdq_matmuls"
  batch_size: int | None  # the graph's static batch size; None when it takes any batch


def write_model(serving, fmt: str, out: pathlib.Path, *, calibration: np.ndarray | None,
                intermediates: converters.Intermediates | None = None,
                range_overrides=None, matmuls_only: bool = False) -> WrittenModel:
  """Writes OUT/<model file> for `fmt` (int8 when `calibration` is given).

  TFLite and ONNX are converted from a SavedModel (and ONNX from the fp32
  TFLite file): pass `intermediates` to make those once for several exports of
  one model. `range_overrides` (ONNX int8 only) fixes tensors' ranges: a QAT
  model's learned ones. `matmuls_only` (int8) quantizes only convolutions and
  matrix products (`uses_layer_norm` models).
  """
  target = out / MODEL_FILES[fmt]
  check_request(fmt, calibration is not None)
  if fmt == "stablehlo":
    converters.write_stablehlo(serving, target)
    return WrittenModel(target, "none", None)
  if fmt == "saved_model":
    if intermediates is None:
      converters.write_saved_model(serving, target)
    else:
      shutil.copytree(intermediates.saved_model(), target)
    return WrittenModel(target, "none", None)
  # Calibrated int8 is converted from the static-batch graph (converters.INT8_BATCH_SIZE); a
  # QAT model's learned ranges are placed on the free-batch graph's tensors
  # (quant.onnx_range_overrides).
  calibrated_int8 = calibration is not None and range_overrides is None
  batch_size = converters.INT8_BATCH_SIZE if calibrated_int8 else None
  with tempfile.TemporaryDirectory() as tmp:
    made = intermediates or converters.Intermediates(serving, pathlib.Path(tmp))
    if fmt == "tflite":
      if calibration is None:
        shutil.copyfile(made.tflite(), target)
        return WrittenModel(target, "none", None)
      quantization = converters.write_tflite(made.saved_model(batch_size), target,
                                            calibration=calibration, matmuls_only=matmuls_only)
      return WrittenModel(target, quantization, batch_size)
    if calibration is None:
      converters.write_onnx(made.tflite(), target, serving.output_names)
      return WrittenModel(target, "none", None)
    fp32 = pathlib.Path(tmp) / "fp32.onnx"
    converters.write_onnx(made.tflite(batch_size), fp32, serving.output_names,
                          free_batch=batch_size is None)
    converters.write_onnx_int8(fp32, target, calibration, range_overrides,
                               matmuls_only=matmuls_only)
  return WrittenModel(target, "static_qdq_matmuls" if matmuls_only else "static_qdq", batch_size)


def uses_layer_norm(model: nnx.Module) -> bool:
  """Whether `model` has a LayerNorm (ViT, ConvNeXt): its int8 exports quantize only matmuls.

  Full-integer int8 of such networks loses too much (ViT-Ti/16: 77% agreement
  with JAX against 99.7% for convolutions and matmuls alone) or does not run in
  LiteRT; see `converters.TFLITE_MATMUL_OPS`.
  """
  return any(isinstance(module, nnx.LayerNorm) for _, module in nnx.iter_graph(model))


def export_info(card: ModelCard, task, fmt: str, model_file: pathlib.Path, *, int8: bool,
                quantization: str, version: str | None, workdir: pathlib.Path,
                output_names: tuple[str, ...], batch_size: int | None = None) -> dict:
  return {
      "format": fmt, "model_file": model_file.name, "int8": int8, "quantization": quantization,
      "arch": card.arch,
      "version": version or content_hash(model_file),
      "class_names": list(card.class_names),
      # batch_size: null when the graph takes any batch; else the static batch of its graph
      "input": {"name": INPUT_NAME, "dtype": "uint8", "layout": "NHWC", "batch_size": batch_size,
                "height": card.image_size, "width": card.image_size, "channels": card.channels},
      "outputs": list(output_names),
      "task": task.to_json(),  # what the outputs mean, thresholds included (vision.tasks)
      "preprocessing": {"scale": "1/255", "mean": list(card.mean), "std": list(card.std),
                        "resize_size": card.resize_size, "interpolation": card.interpolation},
      "num_classes": card.num_classes,
      "source_workdir": str(workdir.absolute()),
  }


@dataclasses.dataclass
class ExportSource:
  """What every export of one model directory starts from: made once, shared by its exports.

  `records` is the parity sample (a fixed random subset of the validation
  split); `intermediates` keeps the SavedModel and fp32 TFLite file that the
  TFLite and ONNX exports are converted from.
  """
  workdir: pathlib.Path
  model: nnx.Module
  card: ModelCard
  spec: pipeline.ImageSpec
  records: RecordSource
  split: str
  train_records: RecordSource
  serving: ServingFunction
  intermediates: converters.Intermediates
  task: object  # vision.tasks: what the outputs mean (the model directory's, thresholds included)

  @classmethod
  def open(cls, workdir: str | os.PathLike, scratch: pathlib.Path, *, data: str | None = None,
           max_examples: int | None = DEFAULT_MAX_EXAMPLES) -> "ExportSource":
    """The model of `workdir` and its data; `scratch` (a directory) holds the intermediates."""
    workdir = pathlib.Path(workdir)
    if max_examples is not None and max_examples < 0:
      raise ConfigError(f"--max_examples={max_examples}: give a number of validation images, "
                        "or 0 for the whole split")
    model, card = load_model(workdir)
    task = tasks.load(workdir)
    # Exported graphs keep XLA's own convolution: TFLite and ONNX have native conv kernels, and
    # the CPU matmul lowering's reshapes do not survive tf2onnx with a free batch dimension.
    layers.set_conv_impl(model, "lax")
    dataset, data_config = _open_splits(workdir, data)
    records = pipeline.limit_examples(dataset.split(data_config.val_split), max_examples or None)
    if not len(records):
      raise ConfigError(
          f"the {data_config.val_split} split is empty: nothing to check the export on")
    # The exported graph folds BatchNorm into its convolutions (see vision.export.fold); the
    # parity check compares it with the unfolded model.
    folded = nnx.clone(model)
    fold_batch_norms(folded)
    serving = serving_function(folded, card, task)
    return cls(workdir, model, card, card_spec(card), records, data_config.val_split,
               dataset.split(data_config.train_split), serving,
               converters.Intermediates(serving, scratch), task)


def _qat_ranges(model: nnx.Module):
  """`range_overrides` for `write_model`: the QAT model's learned ranges, placed on the ONNX graph."""
  return lambda onnx_model: quant.onnx_range_overrides(onnx_model, model)


def export_from(source: ExportSource, fmt: str, out: str | os.PathLike, *, int8: bool = False,
                version: str | None = None, calibration_examples: int = CALIBRATION_EXAMPLES,
                latency_repeats: int = DEFAULT_REPEATS) -> dict:
  """One export of `source` to OUT, checked; returns the report (see `export_workdir`)."""
  out = pathlib.Path(out)
  check_request(fmt, int8)
  _check_out(out)
  calibration = (calibration_images(source.train_records, source.spec, calibration_examples)
                 if int8 else None)
  out.parent.mkdir(parents=True, exist_ok=True)
  started = time.monotonic()
  qat = int8 and fmt == "onnx" and quant.is_quantized(source.model)
  # Converted next to OUT and moved in once made: a failed conversion leaves OUT as it was.
  with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as staging:
    with converter_step(fmt):
      written = write_model(source.serving, fmt, pathlib.Path(staging), calibration=calibration,
                            intermediates=source.intermediates,
                            range_overrides=_qat_ranges(source.model) if qat else None,
                            matmuls_only=int8 and not qat and uses_layer_norm(source.model))
    model_file = _replace_out(out, written.path)
  info = export_info(source.card, source.task, fmt, model_file, int8=int8,
                     quantization=written.quantization, version=version,
                     workdir=source.workdir, output_names=source.serving.output_names,
                     batch_size=written.batch_size)
  write_text_atomically(out / EXPORT_JSON, json.dumps(info, indent=2))
  log.info("wrote %s in %.0f s; checking it against JAX on %d %s images", model_file,
           time.monotonic() - started, len(source.records), source.split)

  # A QAT model's own forward pass simulates int8: the reference of its int8 export.
  jax_logits = jax_logits_function(
      source.model if int8 else quant.float_model(source.model), source.card)
  batches = _batches(source.records, source.spec, np.arange(len(source.records)))
  with converter_step(fmt, stage="run", keep=(ParityError,)):
    exported = load_exported(out)
    parity = parity_report(jax_logits, exported, batches, source.task,
                           total=len(source.records))
  report = {"format": fmt, "int8": int8, "runtime": RUNTIMES[fmt], "version": info["version"],
            "split": source.split,
            **({"int8_ranges": "qat" if qat else "calibration"} if int8 else {}), **parity}
  first_image = pipeline.read_batch(source.records, np.arange(1), source.spec)[0]
  report["size_bytes"] = converters.tree_size(model_file)
  weights = nnx.state(source.model, nnx.Not(nnx.RngState))
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


def export_workdir(workdir: str | os.PathLike, fmt: str, out: str | os.PathLike, *,
                   int8: bool = False, version: str | None = None, data: str | None = None,
                   max_examples: int | None = DEFAULT_MAX_EXAMPLES,
                   calibration_examples: int = CALIBRATION_EXAMPLES,
                   latency_repeats: int = DEFAULT_REPEATS) -> dict:
  """Exports, checks parity on a validation sample, writes OUT; returns the report.

  `max_examples` bounds the parity sample (a fixed random subset of the
  validation split; None or 0: the whole split). Raises ExportError (OUT left
  as it was) when a converter fails or the exported model does not run, and
  ParityError (after writing OUT/export_report.json) when the check fails.
  """
  check_request(fmt, int8)
  _check_out(pathlib.Path(out))
  with tempfile.TemporaryDirectory() as scratch:
    source = ExportSource.open(workdir, pathlib.Path(scratch), data=data,
                               max_examples=max_examples)
    return export_from(source, fmt, out, int8=int8, version=version,
                       calibration_examples=calibration_examples,
                       latency_repeats=latency_repeats)
