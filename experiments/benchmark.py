"""Measures training speed on this machine, all figures from one run.

    python -m experiments.benchmark [--model=resnet18 --batch_size=128 --image_size=32] \
        [--steps=5] [--nocompare_untuned] [--out=benchmark.json]

Without --model, runs the suite: the quickstart's small CNN (28×28×1) and, at
32×32, ResNet-18 and the zoo's MobileNetV2 and ViT-Ti when registered. For each
model it prints the JAX train step's images/s and the fraction of a large fp32
matmul's FLOP/s it achieves (XLA cost analysis), the same step untuned (XLA's
default CPU flags, conv_impl='lax'; a child process) and the speedup over it,
and PyTorch eager's images/s on the twin architecture with JAX/PyTorch; then
the input-pipeline overhead (grain vs arrays in memory) on the first model.
"""

import json
import pathlib

from absl import flags

from experiments import common
from vision.benchmark import BenchmarkOptions, format_results, run_benchmark

_MODEL = flags.DEFINE_string(
    "model", None, "One model (the registry's name) instead of the suite; uses --image_size.")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Batch size.")
_SIZE = flags.DEFINE_integer("image_size", 32, "Image height and width.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per measurement (after one warm-up).")
_MATMUL = flags.DEFINE_integer("matmul_size", 4096, "Side of the square matmul for the peak.")
_TORCH = flags.DEFINE_bool("torch", True, "Also time PyTorch eager, when torch is installed.")
_UNTUNED = flags.DEFINE_bool(
    "compare_untuned", True,
    "Also time the step untuned: XLA's default CPU flags and conv_impl='lax' (child process).")
_OUT = flags.DEFINE_string("out", None, "Also write the results as JSON to this file.")


def main(argv: list[str]) -> None:
  common.reject_extra_arguments(argv)
  results = run_benchmark(BenchmarkOptions(
      model=_MODEL.value, batch_size=_BATCH.value, image_size=_SIZE.value, steps=_STEPS.value,
      matmul_size=_MATMUL.value, torch=_TORCH.value, compare_untuned=_UNTUNED.value))
  print(format_results(results))
  if _OUT.value:
    pathlib.Path(_OUT.value).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
  common.run(main)
