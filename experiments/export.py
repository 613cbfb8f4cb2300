"""Exports a model directory and checks the export against the JAX model.

    python -m experiments.export --workdir=runs/fashion_mnist --format=onnx --out=exports/fmnist_onnx
    python -m experiments.export --workdir=runs/fashion_mnist --format=tflite --int8 \
        --out=exports/fmnist_tflite_int8

Formats: saved_model, tflite, onnx, stablehlo (--int8: tflite and onnx). OUT
gets the model file, export.json and export_report.json; the command prints
the report. The check runs on a fixed random sample of the validation split
(--max_examples, 2,000 by default; 0 for all of it), streamed in batches with
progress on stderr. It exits with one line `error: ...` (status 2) when the
exported model disagrees with the JAX model (fp32: top-1 agreement below
99.9%; int8: below 97% or accuracy down by more than 2 points), or when a
converter fails (`error: <format>: <op or reason>; <what to do>`; OUT is left
as it was).
"""

import json
import os

# TensorFlow's C++ start-up chatter would bury the one line a user needs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from experiments import common  # noqa: E402
from vision import export  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "A model directory written by experiments.train.")
_FORMAT = flags.DEFINE_string("format", None, f"One of {', '.join(export.FORMATS)}.")
_OUT = flags.DEFINE_string("out", None, "The export directory to write (new, empty, or an "
                           "earlier export, which is replaced).")
_INT8 = flags.DEFINE_bool("int8", False, "Post-training int8 quantization calibrated on training "
                          "images (tflite, onnx).")
_VERSION = flags.DEFINE_string("version", None, "The version label the server reports "
                               "(default: a short hash of the model file).")
_DATA = flags.DEFINE_string("data", None, "Data source for the parity check and calibration "
                            "(default: the one in WORKDIR/config.json).")
_MAX_EXAMPLES = flags.DEFINE_integer(
    "max_examples", export.DEFAULT_MAX_EXAMPLES, "Check on a fixed random sample of this many "
    "validation images (0: the whole split).")
_CALIBRATION = flags.DEFINE_integer("calibration_examples", 256, "Training images that "
                                    "calibrate int8 quantization.")
flags.mark_flags_as_required(["workdir", "format", "out"])


def main(argv: list[str]) -> None:
  common.reject_extra_arguments(argv)
  try:
    report = export.export_workdir(
        _WORKDIR.value, _FORMAT.value, _OUT.value, int8=_INT8.value, version=_VERSION.value,
        data=_DATA.value, max_examples=_MAX_EXAMPLES.value,
        calibration_examples=_CALIBRATION.value)
  except export.ParityError as error:
    common.fail(f"export check failed: {error}")
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  common.run(main)
