"""Per-image latency of JAX vs TFLite (LiteRT) vs ONNX Runtime, fp32 and int8.

    python -m experiments.benchmark_export --workdir=runs/fashion_mnist [--out=/tmp/bench] \
        [--repeats=200] [--json=latency.json]

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
_JSON = flags.DEFINE_string("json", None, "Also write the rows as JSON to this file.")
flags.mark_flag_as_required("workdir")


def main(argv: list[str]) -> None:
  common.reject_extra_arguments(argv)
  with tempfile.TemporaryDirectory() as tmp:
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
