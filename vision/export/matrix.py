"""The export matrix: model directories × formats (fp32, and int8 where a format has it).

    rows = export_matrix({"resnet18": "runs/r18", "vit_ti16": "runs/vit"}, "/tmp/matrix")
    print(format_matrix(rows))

Each model directory is opened once (`ExportSource`: the model, the parity
sample, and the SavedModel and fp32 TFLite file every TFLite and ONNX export
is converted from), then exported to each target with `export_from`, the same
step `experiments.export` runs, parity check included. A target that fails
(a converter's one-line `ExportError`, or a `ParityError`) is a row with
`passed: False` and its `error`; the matrix carries on with the next one.
`experiments.export_matrix` trains the model directories (every family and
every shipped config's network) and runs this.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import tempfile
import time
from typing import Mapping, Sequence

import ml_collections

from vision import config as config_lib
from vision.export.errors import ExportError
from vision.export.export import (CALIBRATION_EXAMPLES, DEFAULT_MAX_EXAMPLES, ExportSource,
                                  ParityError, export_from)

# Each family's smallest registered variant; `family()` maps every registered name to one.
SMALLEST_VARIANTS = {
    "small_cnn": "small_cnn", "resnet": "resnet18", "mobilenet_v2": "mobilenet_v2",
    "mobilenet_v3": "mobilenet_v3_small", "efficientnet": "efficientnet_b0",
    "efficientnet_lite": "efficientnet_lite0", "vit": "vit_ti16", "convnext": "convnext_tiny",
}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# (format, int8): every format in fp32, and int8 where the format has it.
TARGETS = (("saved_model", False), ("stablehlo", False), ("tflite", False), ("tflite", True),
           ("onnx", False), ("onnx", True))


def target_name(fmt: str, int8: bool) -> str:
  """'onnx' or 'onnx_int8': a target as `--targets` spells it."""
  return f"{fmt}_int8" if int8 else fmt


def parse_targets(names: Sequence[str]) -> tuple[tuple[str, bool], ...]:
  """`TARGETS` entries from their names ('tflite', 'onnx_int8'); ConfigError names a wrong one."""
  known = {target_name(*target): target for target in TARGETS}
  unknown = [name for name in names if name not in known]
  if unknown or not names:
    raise config_lib.ConfigError(f"--targets={','.join(names)}: expected one or more of "
                                 f"{', '.join(known)}")
  return tuple(known[name] for name in names)


def family(arch: str) -> str:
  """The family of a registered model name: 'resnet' for 'resnet50', 'vit' for 'vit_b16'."""
  for name in sorted(SMALLEST_VARIANTS, key=len, reverse=True):
    if arch == name or arch.startswith(f"{name}_") or re.fullmatch(rf"{name}\d+", arch):
      return name
  raise KeyError(f"{arch} belongs to no family in SMALLEST_VARIANTS")


def family_config(arch: str, image_size: int = 32) -> ml_collections.ConfigDict:
  """A family's matrix config: Fashion-MNIST as RGB at `image_size` px, AdamW at 1e-3, batch 32."""
  config = config_lib.defaults()
  config_lib.use_fashion_mnist(config)
  config.data.image_size, config.data.channels = image_size, 3
  config.data.mean, config.data.std = IMAGENET_MEAN, IMAGENET_STD
  config.model.name = arch
  config.train.batch_size = 32
  config.optim.name, config.optim.learning_rate, config.optim.weight_decay = "adamw", 1e-3, 0.05
  config.optim.schedule = "constant"
  return config


def _row(case: str, arch: str, fmt: str, int8: bool, seconds: float, report: dict | None,
         error: str | None) -> dict:
  row = {"case": case, "arch": arch, "format": fmt, "precision": "int8" if int8 else "fp32",
         "passed": error is None, "seconds": round(seconds, 1)}
  if report:
    row.update({key: report[key] for key in (
        "top1_agreement", "max_abs_logit_diff", "accuracy_jax", "accuracy_exported",
        "num_examples", "size_bytes") if key in report})
  if error:
    row["error"] = error
  return row


def export_matrix(workdirs: Mapping[str, str | os.PathLike], out: str | os.PathLike, *,
                  targets: Sequence[tuple[str, bool]] = TARGETS, data: str | None = None,
                  max_examples: int | None = DEFAULT_MAX_EXAMPLES,
                  calibration_examples: int = CALIBRATION_EXAMPLES,
                  latency_repeats: int = 5) -> list[dict]:
  """One row per (case, target): exported to OUT/<case>/<format>[_int8] and checked.

  Rows hold `case`, `arch`, `format`, `precision`, `passed`, `seconds` and,
  when the check ran, `top1_agreement`, `max_abs_logit_diff`, `accuracy_jax`,
  `accuracy_exported`, `num_examples`, `size_bytes`; failed rows hold `error`.
  """
  out = pathlib.Path(out)
  rows = []
  for case, workdir in workdirs.items():
    with tempfile.TemporaryDirectory() as scratch:
      source = ExportSource.open(workdir, pathlib.Path(scratch), data=data,
                                 max_examples=max_examples)
      for fmt, int8 in targets:
        started, report, error = time.monotonic(), None, None
        target = out / case / target_name(fmt, int8)
        try:
          report = export_from(source, fmt, target, int8=int8,
                               calibration_examples=calibration_examples,
                               latency_repeats=latency_repeats)
        except ExportError as failure:
          error = str(failure)
        except ParityError as failure:
          error, report = f"parity: {failure}", _written_report(target)
        rows.append(_row(case, source.card.arch, fmt, int8, time.monotonic() - started, report,
                         error))
  return rows


def _written_report(directory: pathlib.Path) -> dict | None:
  path = directory / "export_report.json"
  return json.loads(path.read_text()) if path.exists() else None


def format_matrix(rows: Sequence[dict]) -> str:
  """A Markdown table, one line per (case, format, precision), then the failures' errors."""
  lines = ["| case | arch | format | precision | parity | max abs Δlogit | top-1 agreement "
           "| accuracy JAX → export | images | seconds |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for row in rows:
    difference = agreement = accuracy = "—"
    if "top1_agreement" in row:
      difference = f"{row['max_abs_logit_diff']:.2g}"
      agreement = f"{row['top1_agreement']:.4f}"
      accuracy = f"{row['accuracy_jax']:.3f} → {row['accuracy_exported']:.3f}"
    lines.append(f"| {row['case']} | {row['arch']} | {row['format']} | {row['precision']} "
                 f"| {'pass' if row['passed'] else 'FAIL'} | {difference} | {agreement} "
                 f"| {accuracy} | {row.get('num_examples', '—')} | {row['seconds']:.0f} |")
  failures = [row for row in rows if not row["passed"]]
  lines += ["", f"{len(rows) - len(failures)} of {len(rows)} exports pass."]
  lines += [f"- {row['case']} {row['format']} {row['precision']}: {row['error']}"
            for row in failures]
  return "\n".join(lines)
