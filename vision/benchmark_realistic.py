"""Realistic workloads at 224 px: ResNet-50's train step, and inference against PyTorch and
ONNX Runtime.

    results = run_realistic(RealisticOptions())
    results["realistic"]["train"]         # ResNet-50's train-step row (the default suite's keys)
    results["realistic"]["inference"][0]  # jax_images_per_s, jax_latency_ms, best_torch, jax_vs_onnx, ...

Inference is what a deployed model runs: the jitted eval-mode forward of the
export's serving function (`vision.export.serving`: uint8 images in, logits and
embedding out, the normalisation included), with the weights as arguments. It
is timed at batch 32 (images/s) and at batch 1 (median latency), against
  * PyTorch on the twin model (`vision.torch_speed`) under `torch.inference_mode`,
    in each setting (eager or compiled, NCHW or channels_last), the best of them
    being the comparison, and
  * ONNX Runtime (CPU execution provider) on the model `vision.export` writes
    (jax2tf → TFLite → tf2onnx), the file `experiments.export --format=onnx` ships.
Models are randomly initialised with 1000 classes (speed does not depend on the
weights). As in the default suite, every runtime takes turns within one round,
so the ratios hold on a noisy machine.
"""

from __future__ import annotations

import dataclasses
import pathlib
import tempfile
from typing import Callable

from flax import nnx
import jax
import numpy as np

from vision import benchmark, tasks, torch_speed
from vision.checkpoint import ModelCard
from vision.export.export import write_model
from vision.export.serving import INPUT_NAME, serving_function
from vision.models import ModelOptions, create_model

# The default realistic suite (issue 18): the classic CNN, two mobile CNNs, a transformer.
INFERENCE_MODELS = ("resnet50", "mobilenet_v2", "efficientnet_b0", "vit_s16")
# ImageNet's normalisation, which the serving function applies to uint8 pixels.
_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class RealisticOptions:
  image_size: int = 224
  num_classes: int = 1000
  # The train-step row: model and batch (None: no train row).
  train_model: str | None = "resnet50"
  train_batch_size: int = 32
  inference_models: tuple[str, ...] = INFERENCE_MODELS
  inference_batch_size: int = 32
  # Timed rounds of the train step and of batch inference; latency calls per runtime.
  steps: int = 3
  latency_repeats: int = 20
  matmul_size: int = 4096
  torch: bool = True
  torch_variants: tuple[str, ...] = torch_speed.VARIANTS
  onnx: bool = True


def _train_row(options: RealisticOptions, peak: float) -> dict:
  bench = benchmark.BenchmarkOptions(
      batch_size=options.train_batch_size, num_classes=options.num_classes,
      steps=options.steps, torch=options.torch, torch_variants=options.torch_variants,
      compare_untuned=False)
  workload = benchmark.Workload(options.train_model, options.image_size, 3)
  return benchmark.measure_train_step(bench, workload, peak)


def _serving(name: str, options: RealisticOptions):
  model = create_model(name, ModelOptions(options.num_classes, 3, options.image_size),
                       rngs=nnx.Rngs(0))
  card = ModelCard(arch=name, num_classes=options.num_classes,
                   class_names=tuple(str(i) for i in range(options.num_classes)),
                   image_size=options.image_size, channels=3, mean=_MEAN, std=_STD,
                   model_options={})
  return serving_function(model, card, tasks.from_card(card))


def _jax_predict(serving, images: np.ndarray) -> tuple[Callable, float]:
  """The serving function jitted with the weights as arguments; its FLOPs for `images`."""
  weights = [jax.device_put(w) for w in serving.weights]
  jitted = jax.jit(serving.apply)
  compiled = jitted.lower(weights, images).compile()  # for its FLOPs, and reused at that shape
  flops = float(compiled.cost_analysis()["flops"])

  def predict(batch: np.ndarray):
    run = compiled if batch.shape == images.shape else jitted
    return jax.block_until_ready(run(weights, batch))

  return predict, flops


def _onnx_predict(serving, directory: pathlib.Path) -> Callable[[np.ndarray], object]:
  """ONNX Runtime on the exported model (what `experiments.export --format=onnx` writes)."""
  import onnxruntime as ort  # pylint: disable=import-outside-toplevel
  path = write_model(serving, "onnx", directory, calibration=None).path
  session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
  return lambda images: session.run(None, {INPUT_NAME: images})


def inference_row(name: str, options: RealisticOptions, peak: float) -> dict:
  """One model's inference figures: JAX, each PyTorch setting and ONNX Runtime, in turns."""
  rng = np.random.default_rng(0)
  size, batch = options.image_size, options.inference_batch_size
  images = rng.integers(0, 256, (batch, size, size, 3), np.uint8)
  image = images[:1]
  serving = _serving(name, options)
  jax_predict, flops = _jax_predict(serving, images)
  throughput = {"jax": lambda: jax_predict(images)}
  latency = {"jax": lambda: jax_predict(image)}
  if options.torch and benchmark.torch_installed():
    spec = torch_speed.TorchInput(batch, 3, size, options.num_classes)
    torch_speed.reset_compiled()
    for variant in options.torch_variants:
      predict = torch_speed.torch_inference(name, spec, variant)
      many, one = (torch_speed.sample_images(spec, variant, count) for count in (batch, 1))
      throughput[variant] = lambda predict=predict, many=many: predict(many)
      latency[variant] = lambda predict=predict, one=one: predict(one)
  onnx_error = None
  if options.onnx:
    try:
      with tempfile.TemporaryDirectory() as tmp:
        onnx_predict = _onnx_predict(serving, pathlib.Path(tmp))
      throughput["onnx"] = lambda: onnx_predict(images)
      latency["onnx"] = lambda: onnx_predict(image)
    except Exception as error:  # pylint: disable=broad-except  # reported in the row
      onnx_error = benchmark.error_line(error)
  batch_timings = benchmark.time_interleaved(throughput, options.steps)
  latency_timings = benchmark.time_interleaved(latency, options.latency_repeats)
  if "jax" in batch_timings.errors:
    raise RuntimeError(f"JAX inference of {name} failed: {batch_timings.errors['jax']}")
  speeds = {runner: batch / seconds for runner, seconds in batch_timings.seconds.items()}
  latency_ms = {runner: 1000 * seconds for runner, seconds in latency_timings.seconds.items()}
  torch_speeds = {v: s for v, s in speeds.items() if v in torch_speed.VARIANTS}
  torch_latency = {v: ms for v, ms in latency_ms.items() if v in torch_speed.VARIANTS}
  best_latency = min(torch_latency.values()) if torch_latency else None
  errors = {**batch_timings.errors, **latency_timings.errors}
  if onnx_error:
    errors["onnx"] = onnx_error
  row = {
      "model": name, "image_size": size, "batch_size": batch,
      "jax_images_per_s": speeds["jax"], "jax_latency_ms": latency_ms["jax"],
      "forward_flops": flops,
      "fraction_of_peak": flops * speeds["jax"] / batch / peak,
      **benchmark.torch_columns(speeds["jax"], torch_speeds, batch_timings, flops / batch, peak),
      **{key.replace("images_per_s", "latency_ms"): torch_latency.get(variant)
         for variant, key in benchmark.TORCH_KEYS.items()},
      "best_torch_latency_ms": best_latency,
      # Above 1: JAX answers one image faster than the fastest PyTorch setting.
      "best_torch_latency_ratio": best_latency / latency_ms["jax"] if best_latency else None,
      "onnx_images_per_s": speeds.get("onnx"),
      "onnx_latency_ms": latency_ms.get("onnx"),
      # JAX's throughput over ONNX Runtime's, and ONNX Runtime's latency over JAX's.
      "jax_vs_onnx": speeds["jax"] / speeds["onnx"] if "onnx" in speeds else None,
      "onnx_latency_ratio": (latency_ms["onnx"] / latency_ms["jax"]
                             if "onnx" in latency_ms else None),
  }
  row["torch_errors"] = {k: v for k, v in errors.items() if k in torch_speed.VARIANTS}
  row["onnx_error"] = errors.get("onnx")
  return row


def run_realistic(options: RealisticOptions = RealisticOptions()) -> dict:
  """The realistic suite; its figures are under the JSON key `realistic`."""
  load_before = benchmark.machine_load()
  peak = benchmark.matmul_peak_flops(options.matmul_size)
  train = _train_row(options, peak) if options.train_model else None
  inference = [inference_row(name, options, peak) for name in options.inference_models]
  return {
      "suite": "realistic",
      **benchmark.machine_info(load_before),
      "peak_flops": peak,
      "realistic": {"train": train, "inference": inference},
  }


def format_realistic(results: dict) -> str:
  figures = results["realistic"]
  lines = [f"realistic suite, fp32; {benchmark.describe_machine(results)}; matmul peak "
           f"{results['peak_flops'] / 1e9:.1f} GFLOP/s"]
  if figures["train"]:
    lines.append(benchmark.format_rows([figures["train"]]))
  number, ratio = benchmark.format_number, benchmark.format_ratio
  lines.append(f"inference at {figures['inference'][0]['image_size'] if figures['inference'] else '-'}"
               " px: batch images/s | batch-1 latency ms")
  lines.append(f"{'model':<17}{'JAX':>8}{'of peak':>8}{'PyTorch best':>13}{'ONNX RT':>9}"
               f"{'JAX/PT':>8}{'JAX/ORT':>8}{'JAX ms':>8}{'PT ms':>8}{'ORT ms':>8}")
  for row in figures["inference"]:
    lines.append(
        f"{row['model']:<17}{row['jax_images_per_s']:>8.1f}"
        f"{benchmark.format_percent(row['fraction_of_peak']):>8}"
        f"{number(row['best_torch_images_per_s']):>9} {(row['best_torch_variant'] or '')[:3]:<3}"
        f"{number(row['onnx_images_per_s']):>9}{ratio(row['best_torch']):>8}"
        f"{ratio(row['jax_vs_onnx']):>8}{number(row['jax_latency_ms']):>8}"
        f"{number(row['best_torch_latency_ms']):>8}{number(row['onnx_latency_ms']):>8}")
    for runtime, error in {**row["torch_errors"], "onnx": row["onnx_error"]}.items():
      if error:
        lines.append(f"  {runtime} failed: {error}")
  return "\n".join(lines)

