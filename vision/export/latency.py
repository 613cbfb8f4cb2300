"""Per-image latency (batch 1, median) of JAX and of exported models.

    median_latency_ms(model.predict, image)                     # one runtime
    rows = compare_latency("runs/fashion_mnist", "/tmp/bench")  # JAX vs TFLite vs ONNX Runtime
    print(format_latency_table(rows))

`compare_latency` exports the model directory as TFLite and ONNX, fp32 and
int8 (each export checked for parity as usual), then times every runtime on
the same validation image, one after the other in this process.
"""

from __future__ import annotations

import os
import pathlib
import statistics
import time
from typing import Any, Callable

import jax
import numpy as np

DEFAULT_REPEATS = 100
_WARMUP = 5


def median_latency_ms(predict: Callable[[np.ndarray], Any], image: np.ndarray, *,
                      repeats: int = DEFAULT_REPEATS) -> float:
  """Median wall time of `predict(image)` in milliseconds, after a few warm-up calls."""
  for _ in range(_WARMUP):
    jax.block_until_ready(predict(image))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(predict(image))
    times.append(time.perf_counter() - start)
  return 1000 * statistics.median(times)


def compare_latency(workdir: str | os.PathLike, out: str | os.PathLike, *,
                    repeats: int = DEFAULT_REPEATS, max_examples: int | None = 1000,
                    formats: tuple[str, ...] = ("tflite", "onnx")) -> list[dict]:
  """One row per runtime and precision: latency_ms_per_image, accuracy, size_bytes."""
  from vision.export import export as export_lib  # pylint: disable=import-outside-toplevel

  out = pathlib.Path(out)
  rows = []
  jax_row = None
  for fmt in formats:
    for int8 in (False, True):
      report = export_lib.export_workdir(
          workdir, fmt, out / f"{fmt}{'_int8' if int8 else ''}", int8=int8,
          max_examples=max_examples, latency_repeats=repeats)
      if jax_row is None:
        jax_row = {"runtime": "JAX (XLA:CPU, jit)", "precision": "fp32",
                   "latency_ms_per_image": report["latency_ms_per_image_jax"],
                   "accuracy": report["accuracy_jax"], "size_bytes": report["size_bytes_jax"]}
        rows.append(jax_row)
      rows.append({"runtime": export_lib.RUNTIMES[fmt], "precision": "int8" if int8 else "fp32",
                   "latency_ms_per_image": report["latency_ms_per_image"],
                   "accuracy": report["accuracy_exported"], "size_bytes": report["size_bytes"],
                   "top1_agreement": report["top1_agreement"]})
  return rows


def format_latency_table(rows: list[dict]) -> str:
  lines = ["| runtime | precision | ms/image (batch 1, median) | accuracy | agreement with JAX "
           "| size |", "|---|---|---|---|---|---|"]
  for row in rows:
    agreement = row.get("top1_agreement")
    lines.append(
        f"| {row['runtime']} | {row['precision']} | {row['latency_ms_per_image']:.3f} "
        f"| {row['accuracy']:.4f} | {'—' if agreement is None else f'{agreement:.4f}'} "
        f"| {row['size_bytes'] / 1e6:.2f} MB |")
  return "\n".join(lines)
