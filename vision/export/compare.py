"""Every export runtime of a model directory side by side: latency, accuracy, size, agreement.

    rows = compare_latency("runs/fashion_mnist", "/tmp/bench")  # JAX vs TFLite vs ONNX Runtime
    print(format_latency_table(rows))

`compare_latency` exports the model directory as TFLite and ONNX, fp32 and
int8 (each export checked for parity as usual), then times every runtime on
the same image in this process, in turns (one call each, repeated), so that
a change in machine load affects every runtime alike.
"""

from __future__ import annotations

import os
import pathlib
import tempfile

import numpy as np

from vision.errors import ConfigError
from vision.export import export as export_lib
from vision.export.latency import DEFAULT_REPEATS, interleaved_latency_ms
from vision.export.runtime import load_exported


def compare_latency(workdir: str | os.PathLike, out: str | os.PathLike, *,
                    repeats: int = DEFAULT_REPEATS, max_examples: int | None = 1000,
                    formats: tuple[str, ...] = ("tflite", "onnx"),
                    threads: int | None = 1) -> list[dict]:
  """One row per runtime and precision: latency_ms_per_image, accuracy, size_bytes, agreement.

  `threads=1` (the default) runs LiteRT and ONNX Runtime single-threaded: at batch 1 a
  small model gains little from a thread pool, and on a shared machine the pools' spinning
  threads slow whichever runtime is timed next.
  """
  out = pathlib.Path(out)
  if unknown := set(formats) - {"tflite", "onnx"}:
    raise ConfigError(f"--formats: {', '.join(sorted(unknown))} has no int8 export; "
                      "choose from tflite, onnx")
  rows, predicts = [], {}
  with tempfile.TemporaryDirectory() as scratch:
    # One source for every export: the model is loaded, and converted to SavedModel and fp32
    # TFLite, once.
    source = export_lib.ExportSource.open(workdir, pathlib.Path(scratch),
                                          max_examples=max_examples)
    card = source.card
    predicts["jax"] = export_lib.jax_logits_function(source.model, card)
    for fmt in formats:
      for int8 in (False, True):
        directory = out / f"{fmt}{'_int8' if int8 else ''}"
        report = export_lib.export_from(source, fmt, directory, int8=int8, latency_repeats=1)
        if not rows:
          rows.append({"runtime": "JAX (XLA:CPU, jit)", "precision": "fp32", "key": "jax",
                       "accuracy": report["accuracy_jax"],
                       "size_bytes": report["size_bytes_jax"]})
        predicts[directory.name] = load_exported(directory, threads=threads).predict
        rows.append({"runtime": export_lib.RUNTIMES[fmt], "precision": "int8" if int8 else "fp32",
                     "key": directory.name, "accuracy": report["accuracy_exported"],
                     "size_bytes": report["size_bytes"],
                     "top1_agreement": report["top1_agreement"],
                     "max_abs_logit_diff": report["max_abs_logit_diff"]})
  image = np.random.default_rng(0).integers(
      0, 256, (1, card.image_size, card.image_size, card.channels), dtype=np.uint8)
  latencies = interleaved_latency_ms(predicts, image, repeats=repeats)
  for row in rows:
    row["latency_ms_per_image"] = latencies[row.pop("key")]
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
