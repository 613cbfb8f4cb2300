"""Compressed variants side by side: test accuracy, exported size and per-image latency.

    rows = compare_variants([("fp32 dense", "runs/dense", False),
                             ("PTQ int8", "runs/dense", True),
                             ("QAT int8", "runs/qat", True)], out="/tmp/variants")
    print(format_variants_table(rows))

Each variant (a model directory, fp32 or int8) is exported to ONNX through
`vision.export.export_workdir` (so every export passes its parity check), its
test accuracy is the *exported* model's on the whole test split (ONNX Runtime,
what a deployment computes), its size is the gzip-compressed model file
(zeros of a pruned model compress; an int8 file is about 4× smaller), its
FLOPs XLA's count for one image, and latencies are medians on one thread,
timed in turns in one process so that machine load hits every variant alike
(`vision.export.latency.interleaved_latency_ms`): per image of a batch-1 call
(`latency_ms_per_image`, what one request waits) and per image of a
`batch_size` call (`latency_ms_per_image_batched`, what a batching server or an
offline job pays). On a model this small the batch-1 figure is dominated by
the graph's fixed per-node cost, so arithmetic saved by pruning shows in the
batched one.
"""

from __future__ import annotations

import gzip
import os
import pathlib
from typing import Sequence

import numpy as np

from vision import config as config_lib
from vision.checkpoint import load_model
from vision.compress import channels, quant
from vision.data import open_from_config, pipeline
from vision.evaluate.evaluate import card_spec
from vision.export import export as export_lib
from vision.export.latency import DEFAULT_REPEATS, interleaved_latency_ms
from vision.export.runtime import load_exported

Variant = tuple[str, str, bool]   # (name, model directory, int8)


def gzip_size(path: pathlib.Path) -> int:
  """Bytes of the file after gzip (level 9)."""
  return len(gzip.compress(path.read_bytes(), compresslevel=9))


def exported_accuracy(export_dir: pathlib.Path, workdir: str | os.PathLike,
                      split: str | None = None, batch: int = 500) -> tuple[float, int]:
  """Top-1 accuracy of an export on `split` (default: the run's test split), and the count."""
  config = config_lib.load_resolved(workdir)
  dataset, _ = open_from_config(config.data)
  records = dataset.split(split or config.data.test_split)
  exported = load_exported(export_dir)
  _, card = load_model(workdir)
  spec = card_spec(card)
  correct = 0
  for start in range(0, len(records), batch):
    images, labels = pipeline.read_batch(records, np.arange(start, min(start + batch,
                                                                         len(records))), spec)
    correct += int(np.sum(exported.predict(images)["logits"].argmax(-1) == labels))
  return correct / len(records), len(records)


def compare_variants(variants: Sequence[Variant], out: str | os.PathLike, *,
                     repeats: int = DEFAULT_REPEATS, max_examples: int | None = 2000,
                     threads: int = 1, batch_size: int = 32) -> list[dict]:
  """One row per variant; the first is the reference of `delta_vs_first` and the speedups."""
  out = pathlib.Path(out)
  rows, predicts = [], {}
  for index, (name, workdir, int8) in enumerate(variants):
    directory = out / f"v{index}"
    report = export_lib.export_workdir(workdir, "onnx", directory, int8=int8,
                                       max_examples=max_examples, latency_repeats=1)
    model, card = load_model(workdir)
    accuracy, count = exported_accuracy(directory, workdir)
    rows.append({
        "model": name, "workdir": str(workdir), "int8": int8,
        "int8_ranges": report.get("int8_ranges"),
        "test_accuracy": accuracy, "test_examples": count,
        "size_bytes": report["size_bytes"],
        "size_bytes_gzip": gzip_size(directory / report_model_file(directory)),
        "flops": channels.forward_flops(quant.float_model(model),
                                        (card.image_size, card.image_size, card.channels)),
        "parameters": channels.parameter_count(quant.float_model(model)),
        "top1_agreement": report["top1_agreement"], "key": directory.name,
    })
    predicts[directory.name] = load_exported(directory, threads=threads).predict
  images = np.random.default_rng(0).integers(
      0, 256, (batch_size, *load_exported(out / "v0").input_shape), dtype=np.uint8)
  single = interleaved_latency_ms(predicts, images[:1], repeats=repeats)
  batched = interleaved_latency_ms(predicts, images, repeats=max(1, repeats // batch_size * 4))
  for row in rows:
    key = row.pop("key")
    row["latency_ms_per_image"] = single[key]
    row["latency_ms_per_image_batched"] = batched[key] / batch_size
    row["latency_batch_size"] = batch_size
    row["delta_vs_first"] = row["test_accuracy"] - rows[0]["test_accuracy"]
    row["speedup_vs_first"] = rows[0]["latency_ms_per_image"] / row["latency_ms_per_image"]
    row["speedup_vs_first_batched"] = (rows[0]["latency_ms_per_image_batched"]
                                       / row["latency_ms_per_image_batched"])
  return rows


def report_model_file(directory: pathlib.Path) -> str:
  return load_exported(directory).info["model_file"]


def format_variants_table(rows: list[dict]) -> str:
  batch = rows[0]["latency_batch_size"] if rows else 0
  lines = ["| model | test acc | Δ vs first | parameters | exported size (gzip) | latency per "
           f"image (ONNX, 1 thread), batch 1 | same, batch {batch} | FLOPs |",
           "|---|---|---|---|---|---|---|---|"]
  for row in rows:
    lines.append(
        f"| {row['model']} | {row['test_accuracy']:.4f} | {100 * row['delta_vs_first']:+.2f} "
        f"| {row['parameters'] / 1e3:.1f} k | {row['size_bytes_gzip'] / 1e3:.0f} kB "
        f"| {row['latency_ms_per_image']:.3f} ms "
        f"({row['speedup_vs_first']:.2f}×) | {row['latency_ms_per_image_batched']:.3f} ms "
        f"({row['speedup_vs_first_batched']:.2f}×) | {row['flops'] / 1e6:.2f} M |")
  return "\n".join(lines)
