"""Per-image latency of JAX vs TFLite (LiteRT) vs ONNX Runtime, fp32 and int8; or variants.

    python -m experiments.benchmark_export --workdir=runs/fashion_mnist [--out=/tmp/bench] \
        [--repeats=200] [--json=latency.json]
    python -m experiments.benchmark_export --variant="fp32 dense=runs/dense" \
        --variant="PTQ int8=runs/dense:int8" --variant="QAT int8=runs/qat:int8" ...

With --variant (repeatable, NAME=DIR or NAME=DIR:int8): each model directory is
exported to ONNX (fp32 or int8; parity-checked), and one row per variant gives
its exported model's test accuracy, the change against the first variant, the
gzip size, the per-image latency on one thread of batch-1 calls and of
--batch_size calls (all timed in turns in this one process) and FLOPs: the compression table (vision/compress/report.py).

Exports the model directory four times (TFLite and ONNX, fp32 and int8, each
parity-checked), then prints one row per runtime: median batch-1 latency,
accuracy on the checked validation images, agreement with JAX and size.
"""

import json
import os
import pathlib
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from experiments import common  # noqa: E402
from vision.compress import report as compress_report  # noqa: E402
from vision.export import ParityError  # noqa: E402
from vision.export.compare import compare_latency, format_latency_table  # noqa: E402
from vision.export.latency import DEFAULT_REPEATS  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "A model directory written by experiments.train.")
_OUT = flags.DEFINE_string("out", None, "Where the four exports go (default: a temporary "
                           "directory, removed afterwards).")
_REPEATS = flags.DEFINE_integer("repeats", DEFAULT_REPEATS, "Timed calls per runtime.")
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples", 1000, "Validation images for each parity "
                                     "check and the accuracy column.")
_FORMATS = flags.DEFINE_list("formats", ["tflite", "onnx"], "Export formats to time "
                             "(each fp32 and int8): tflite, onnx.")
_THREADS = flags.DEFINE_integer("threads", 1, "Threads for LiteRT and ONNX Runtime (0: "
                                "their defaults).")
_BATCH = flags.DEFINE_integer("batch_size", 32, "With --variant: the batch of the second "
                              "latency column (per image of one call of this many images).")
_JSON = flags.DEFINE_string("json", None, "Also write the rows as JSON to this file.")
_VARIANTS = flags.DEFINE_multi_string("variant", [], "NAME=DIR or NAME=DIR:int8: compare "
                                      "these model directories as ONNX exports (repeat).")
flags.register_validator("workdir", lambda value: bool(value) != bool(_VARIANTS.value),
                         "give --workdir or --variant (one of them)")


def _variants() -> list[compress_report.Variant]:
  parsed = []
  for item in _VARIANTS.value:
    name, sep, directory = item.rpartition("=")
    if not sep or not name:
      common.fail(f"--variant={item!r}: expected NAME=DIR or NAME=DIR:int8")
    int8 = directory.endswith(":int8")
    parsed.append((name, directory.removesuffix(":int8"), int8))
  return parsed


def main(argv: list[str]) -> None:
  common.reject_extra_arguments(argv)
  with tempfile.TemporaryDirectory() as tmp:
    if _VARIANTS.value:
      try:
        rows = compress_report.compare_variants(
            _variants(), _OUT.value or tmp, repeats=_REPEATS.value,
            max_examples=_MAX_EXAMPLES.value, threads=_THREADS.value or 1,
            batch_size=_BATCH.value)
      except ParityError as error:
        common.fail(f"export check failed: {error}")
      print(compress_report.format_variants_table(rows))
      if _JSON.value:
        pathlib.Path(_JSON.value).write_text(json.dumps(rows, indent=2))
      return
    try:
      rows = compare_latency(_WORKDIR.value, _OUT.value or tmp, repeats=_REPEATS.value,
                             max_examples=_MAX_EXAMPLES.value, formats=tuple(_FORMATS.value),
                             threads=_THREADS.value or None)
    except ParityError as error:
      common.fail(f"export check failed: {error}")
  print(format_latency_table(rows))
  if _JSON.value:
    pathlib.Path(_JSON.value).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
  common.run(main)
