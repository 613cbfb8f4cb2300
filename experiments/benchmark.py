"""Measures speed on this machine, all figures of a suite from one run.

    python -m experiments.benchmark [--model=resnet18 --batch_size=128 --image_size=32] \
        [--steps=5] [--nocompare_untuned] [--torch_variants=eager,compile] [--profile] \
        [--out=bench.json]
    python -m experiments.benchmark --suite=realistic [--models=resnet50,vit_s16] [--out=...]
    python -m experiments.benchmark --suite=accelerator [--batch_size=128] [--out=...]

--suite=default (the default) times the train step of the quickstart's small
CNN (28×28×1) and, at 32×32, ResNet-18, MobileNetV2 and ViT-Ti (--model: one
model at --image_size): JAX's images/s and share of a large fp32 matmul's
FLOP/s, the same step untuned (XLA's default CPU flags, conv_impl='lax'; a
child process), PyTorch on the twin architecture in each setting (eager NCHW,
channels_last, torch.compile, compiled channels_last) and JAX over the best of
them, then the grain pipeline's overhead on the first model.

--suite=realistic (JSON key `realistic`): at 224 px, ResNet-50's train step
(batch 32, --model to change it), and inference (batch 32 images/s, batch-1
latency) of ResNet-50, MobileNetV2, EfficientNet-B0 and ViT-S/16 (--models)
in JAX, PyTorch (best setting) and ONNX Runtime on the exported model.

--suite=accelerator (JSON key `accelerator`): for a GPU/TPU machine, the
quickstart at smoke size (--quickstart_config, overridable key by key), then
ResNet-50 at 224 px in bfloat16 (--batch_size per device): images/s, share of
the device's bfloat16 matmul peak, and the data-parallel step over every device.

--image_size, --batch_size, --steps and --matmul_size default to each suite's own values.
"""

import json
import pathlib

from absl import flags
from ml_collections import config_flags

from experiments import common
from vision import benchmark, benchmark_accelerator, benchmark_realistic, torch_speed

SUITES = ("default", "realistic", "accelerator")
_QUICKSTART = pathlib.Path(__file__).resolve().parents[1] / "configs" / "fashion_mnist.py"

_SUITE = flags.DEFINE_enum("suite", "default", SUITES, "Which workloads to measure.")
_MODEL = flags.DEFINE_string(
    "model", None, "default suite: one model (the registry's name) at --image_size instead of "
    "the suite; realistic: the train-step model (resnet50); accelerator: the model (resnet50).")
_MODELS = flags.DEFINE_list(
    "models", None, "realistic suite: the inference models "
    f"(default {','.join(benchmark_realistic.INFERENCE_MODELS)}).")
_BATCH = flags.DEFINE_integer(
    "batch_size", None, "Batch size (default suite 128; realistic train step 32; accelerator "
    "128 per device).")
_SIZE = flags.DEFINE_integer(
    "image_size", None, "Image height and width (--model in the default suite: 32; realistic "
    "and accelerator: 224).")
_STEPS = flags.DEFINE_integer(
    "steps", None, "Timed steps (rounds) per measurement, after one warm-up (default suite 5, "
    "realistic 3, accelerator 10).")
_MATMUL = flags.DEFINE_integer(
    "matmul_size", None, "Side of the square matmul for the peak (4096; accelerator 8192).")
_TORCH = flags.DEFINE_bool("torch", True, "Also time PyTorch, when torch is installed.")
_VARIANTS = flags.DEFINE_list(
    "torch_variants", list(torch_speed.VARIANTS),
    f"PyTorch settings to time, the best being the comparison: {', '.join(torch_speed.VARIANTS)}.")
_UNTUNED = flags.DEFINE_bool(
    "compare_untuned", True,
    "default suite: also time the step untuned: XLA's default CPU flags and conv_impl='lax' "
    "(child process).")
_ONNX = flags.DEFINE_bool(
    "onnx", True, "realistic suite: also export each model to ONNX and time ONNX Runtime.")
_LATENCY = flags.DEFINE_integer(
    "latency_repeats", None, "realistic suite: batch-1 calls per runtime (default 20).")
_QUICKSTART_CONFIG = config_flags.DEFINE_config_file(
    "quickstart_config", f"{_QUICKSTART}:smoke",
    "accelerator suite: the quickstart config it trains (keys can be overridden, e.g. "
    "--quickstart_config.train.epochs=1).")
_PROFILE = flags.DEFINE_bool(
    "profile", False, "default suite: also trace each JAX step (jax.profiler) and print its "
    "costliest HLO ops and kinds of op (JSON key op_profile).")
_OUT = flags.DEFINE_string("out", None, "Also write the results as JSON to this file.")


def _given(**values) -> dict:
  """The flags the user set, under the option names they map to."""
  return {name: value for name, value in values.items() if value is not None}


def _default_suite() -> tuple[dict, str]:
  options = benchmark.BenchmarkOptions(
      model=_MODEL.value, torch=_TORCH.value, torch_variants=tuple(_VARIANTS.value),
      compare_untuned=_UNTUNED.value, profile=_PROFILE.value,
      **_given(batch_size=_BATCH.value, image_size=_SIZE.value, steps=_STEPS.value,
               matmul_size=_MATMUL.value))
  results = benchmark.run_benchmark(options)
  return results, benchmark.format_results(results)


def _realistic_suite() -> tuple[dict, str]:
  options = benchmark_realistic.RealisticOptions(
      torch=_TORCH.value, torch_variants=tuple(_VARIANTS.value), onnx=_ONNX.value,
      **_given(train_model=_MODEL.value, train_batch_size=_BATCH.value,
               image_size=_SIZE.value, steps=_STEPS.value, matmul_size=_MATMUL.value,
               latency_repeats=_LATENCY.value,
               inference_models=tuple(_MODELS.value) if _MODELS.value else None))
  results = benchmark_realistic.run_realistic(options)
  return results, benchmark_realistic.format_realistic(results)


def _accelerator_suite() -> tuple[dict, str]:
  options = benchmark_accelerator.AcceleratorOptions(
      **_given(model=_MODEL.value, batch_size=_BATCH.value, image_size=_SIZE.value,
               steps=_STEPS.value, matmul_size=_MATMUL.value))
  results = benchmark_accelerator.run_accelerator(options, _QUICKSTART_CONFIG.value)
  return results, benchmark_accelerator.format_accelerator(results)


def main(argv: list[str]) -> None:
  common.reject_extra_arguments(argv)
  try:
    torch_speed.check_variants(_VARIANTS.value)
  except ValueError as error:
    common.fail(f"--torch_variants: {error}")
  suite = {"default": _default_suite, "realistic": _realistic_suite,
           "accelerator": _accelerator_suite}[_SUITE.value]
  results, text = suite()
  print(text)
  if _OUT.value:
    pathlib.Path(_OUT.value).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
  common.run(main)
