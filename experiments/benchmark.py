"""Measures training speed on this machine, all figures from one run.

    python -m experiments.benchmark [--model=resnet18 --batch_size=128 --image_size=32] \
        [--out=benchmark.json]

Prints the JAX train step's images/s, the FLOP/s it achieves (XLA cost
analysis) against a large fp32 matmul, the input-pipeline overhead (grain vs
arrays in memory) and, when torch is installed, PyTorch eager's images/s.
"""

import json
import pathlib

from absl import flags

from experiments import common
from vision.benchmark import BenchmarkOptions, format_results, run_benchmark

_MODEL = flags.DEFINE_string("model", "resnet18", "Model name (the registry's).")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Batch size.")
_SIZE = flags.DEFINE_integer("image_size", 32, "Image height and width.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per measurement (after one warm-up).")
_MATMUL = flags.DEFINE_integer("matmul_size", 4096, "Side of the square matmul for the peak.")
_TORCH = flags.DEFINE_bool("torch", True, "Also time PyTorch eager, when torch is installed.")
_OUT = flags.DEFINE_string("out", None, "Also write the results as JSON to this file.")


def main(argv: list[str]) -> None:
  common.reject_extra_arguments(argv)
  results = run_benchmark(BenchmarkOptions(
      model=_MODEL.value, batch_size=_BATCH.value, image_size=_SIZE.value, steps=_STEPS.value,
      matmul_size=_MATMUL.value, torch=_TORCH.value))
  print(format_results(results))
  if _OUT.value:
    pathlib.Path(_OUT.value).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
  common.run(main)
