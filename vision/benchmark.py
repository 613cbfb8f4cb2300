"""Training-speed benchmark: JAX train step vs the matmul peak, untuned XLA, grain, PyTorch eager.

    results = run_benchmark(BenchmarkOptions())             # the suite, or model="resnet18"
    row = results["rows"][0]     # jax_images_per_s, fraction_of_peak, jax_vs_torch, ...

All figures come from one run, one after the other, so their ratios are
meaningful on a shared, noisy machine even when the absolute numbers drift.
The untuned column (XLA's default CPU flags, `conv_impl='lax'`: what a plain
`nnx.Conv` model gets) runs in a child process, because XLA reads its flags once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import Callable

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vision import parallel, xla_flags
from vision.data import pipeline
from vision.data.sources import ArraySource
from vision.models import MODELS, ModelOptions, create_model
from vision.train.step import Steps


@dataclasses.dataclass(frozen=True)
class Workload:
  """One benchmarked architecture and input: what a row of the table measures."""
  model: str
  image_size: int = 32
  channels: int = 3
  widths: tuple[int, ...] = (32, 64)
  hidden: int = 128


# The default suite: the quickstart's small CNN (configs/fashion_mnist.py's widths
# and input) and, at 32×32, ResNet-18 with the small-image stem and the zoo's
# mobile and transformer baselines when they are registered.
SUITE = (
    Workload("small_cnn", 28, 1, widths=(24, 48, 96), hidden=128),
    Workload("resnet18", 32, 3),
    Workload("mobilenet_v2", 32, 3),
    Workload("vit_ti16", 32, 3),
)


@dataclasses.dataclass(frozen=True)
class BenchmarkOptions:
  """`model=None` runs the `SUITE` (the models that exist); a name runs that model alone."""
  model: str | None = None
  batch_size: int = 128
  image_size: int = 32
  channels: int = 3
  num_classes: int = 10
  steps: int = 5
  matmul_size: int = 4096
  torch: bool = True
  # Also time the step untuned (XLA's default flags, conv_impl='lax'), in a child process.
  compare_untuned: bool = True

  def workloads(self) -> list[Workload]:
    if self.model is not None:
      return [Workload(self.model, self.image_size, self.channels)]
    return [w for w in SUITE if w.model in MODELS]


def time_per_call(fn: Callable[[], object], repeats: int) -> float:
  """Median seconds per call after one warm-up call; `fn` must block until done."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def matmul_peak_flops(size: int = 4096, repeats: int = 5) -> float:
  """FLOP/s of a large fp32 matmul: the practical peak of this machine."""
  a = jnp.asarray(np.random.default_rng(0).standard_normal((size, size), np.float32))
  matmul = jax.jit(lambda a: a @ a)
  seconds = time_per_call(lambda: matmul(a).block_until_ready(), repeats)
  return 2 * size**3 / seconds


def _random_batch(options: BenchmarkOptions, workload: Workload,
                  rng: np.random.Generator) -> dict[str, np.ndarray]:
  shape = (options.batch_size, workload.image_size, workload.image_size, workload.channels)
  return {"image": rng.standard_normal(shape, np.float32),
          "label": rng.integers(0, options.num_classes, options.batch_size).astype(np.int32)}


def _jax_steps(options: BenchmarkOptions, workload: Workload,
               conv_impl: str) -> tuple[Steps, jax.sharding.Mesh]:
  model_options = ModelOptions(options.num_classes, workload.channels, workload.image_size,
                               widths=workload.widths, hidden=workload.hidden,
                               conv_impl=conv_impl)
  model = create_model(workload.model, model_options, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.sgd(0.01, momentum=0.9), wrt=nnx.Param)
  mesh = parallel.make_mesh()
  return Steps.create(model, optimizer, mesh), mesh


def jax_train_speed(options: BenchmarkOptions, workload: Workload,
                    conv_impl: str = "auto") -> dict[str, float]:
  """Images/s and achieved FLOP/s of the compiled train step on in-memory arrays."""
  steps, mesh = _jax_steps(options, workload, conv_impl)
  batch = parallel.to_global(_random_batch(options, workload, np.random.default_rng(0)), mesh)
  rng = jax.random.key(0)
  state = steps.state
  train = steps.train.lower(state, batch, rng).compile()
  flops = train.cost_analysis()["flops"]

  def one_step():
    nonlocal state
    state, metrics = train(state, batch, rng)
    jax.block_until_ready(metrics)

  seconds = time_per_call(one_step, options.steps)
  return {"jax_images_per_s": options.batch_size / seconds, "step_flops": float(flops),
          "achieved_flops": float(flops) / seconds}


def grain_fed_speed(options: BenchmarkOptions, workload: Workload) -> float:
  """Images/s of the same step fed by the grain pipeline (decode, augment, batch)."""
  steps, mesh = _jax_steps(options, workload, "auto")
  count = options.batch_size * (options.steps + 2)
  rng = np.random.default_rng(0)
  images = rng.integers(
      0, 256, (count, workload.image_size, workload.image_size, workload.channels), np.uint8)
  records = ArraySource(images, rng.integers(0, options.num_classes, count))
  data_config = ml_collections.ConfigDict(
      {"crop_padding": 4, "flip": True, "worker_count": 0})
  spec = pipeline.ImageSpec(workload.image_size, workload.channels,
                            (0.5,) * workload.channels, (0.5,) * workload.channels)
  loader = pipeline.train_iterator(records, data_config, spec,
                                   batch_size=options.batch_size, seed=0)
  state, key = steps.state, jax.random.key(0)

  def one_step():
    nonlocal state
    state, metrics = steps.train(state, parallel.to_global(next(loader), mesh), key)
    jax.block_until_ready(metrics)

  return options.batch_size / time_per_call(one_step, options.steps)


def torch_train_speed(options: BenchmarkOptions, workload: Workload) -> float | None:
  """Images/s of the same architecture's train step in PyTorch eager, if torch and a twin exist."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
    from vision.torch_reference import make_torch_model  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  torch.manual_seed(0)
  try:
    model = make_torch_model(workload.model, options.num_classes, workload.channels,
                             workload.image_size, widths=workload.widths,
                             hidden=workload.hidden).train()
  except ValueError:  # no PyTorch twin for this model
    return None
  optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
  images = torch.randn(options.batch_size, workload.channels, workload.image_size,
                       workload.image_size)
  labels = torch.randint(0, options.num_classes, (options.batch_size,))

  def one_step():
    optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()

  return options.batch_size / time_per_call(one_step, options.steps)


def untuned_speed(options: BenchmarkOptions, workload: Workload) -> float:
  """Images/s of the same step with XLA's default CPU flags and `conv_impl='lax'`."""
  code = ("import json, sys; from vision import benchmark as b; "
          "o = b.BenchmarkOptions(**json.loads(sys.argv[1])); "
          "w = b.Workload(**json.loads(sys.argv[2])); "
          "print(json.dumps(b.jax_train_speed(o, w, 'lax')['jax_images_per_s']))")
  env = {**os.environ, xla_flags.OPT_OUT: "0",
         "XLA_FLAGS": xla_flags.user_xla_flags}
  result = subprocess.run(
      [sys.executable, "-c", code, json.dumps(dataclasses.asdict(options)),
       json.dumps(dataclasses.asdict(workload))],
      env=env, capture_output=True, text=True, check=True)
  return float(result.stdout.strip().splitlines()[-1])


def _measure(options: BenchmarkOptions, workload: Workload, peak: float) -> dict:
  jax_speed = jax_train_speed(options, workload)
  untuned = untuned_speed(options, workload) if options.compare_untuned else None
  torch_speed = torch_train_speed(options, workload) if options.torch else None
  images_per_s = jax_speed["jax_images_per_s"]
  return {
      "model": workload.model, "image_size": workload.image_size,
      "channels": workload.channels,
      "conv_impl": "auto",
      **jax_speed,
      "fraction_of_peak": jax_speed["achieved_flops"] / peak,
      "untuned_images_per_s": untuned,
      "speedup_vs_untuned": images_per_s / untuned if untuned else None,
      "torch_images_per_s": torch_speed,
      # PyTorch runs the same architecture, so it does the same FLOPs per image.
      "torch_fraction_of_peak": (jax_speed["step_flops"] / options.batch_size * torch_speed / peak
                                 if torch_speed else None),
      "jax_vs_torch": images_per_s / torch_speed if torch_speed else None,
  }


def run_benchmark(options: BenchmarkOptions) -> dict:
  """Every figure from one process. Top-level model keys repeat the first row's (`rows[0]`)."""
  workloads = options.workloads()
  peak = matmul_peak_flops(options.matmul_size)
  rows = [_measure(options, workload, peak) for workload in workloads]
  # The pipeline overhead on the first workload: the quickstart's, where steps are shortest.
  grain_speed = grain_fed_speed(options, workloads[0])
  return {
      **rows[0],
      "batch_size": options.batch_size, "devices": jax.device_count(),
      "backend": jax.default_backend(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "peak_flops": peak,
      "grain_images_per_s": grain_speed,
      # The share of training time the input pipeline adds.
      "pipeline_overhead": max(0.0, 1.0 - grain_speed / rows[0]["jax_images_per_s"]),
      "rows": rows,
  }


def _ratio(value: float | None, suffix: str = "x") -> str:
  return f"{value:.2f}{suffix}" if value else "-"


def format_results(results: dict) -> str:
  lines = [f"batch {results['batch_size']}, fp32, {results['devices']} {results['backend']} "
           f"device(s); matmul peak {results['peak_flops'] / 1e9:.1f} GFLOP/s; "
           f"XLA flags {results['xla_flags'] or '(none)'}",
           f"{'model':<22}{'JAX img/s':>10}{'of peak':>9}{'untuned':>9}{'speedup':>9}"
           f"{'PyTorch img/s':>15}{'of peak':>9}{'JAX/PyTorch':>13}"]
  for row in results["rows"]:
    name = f"{row['model']} {row['image_size']}x{row['image_size']}x{row['channels']}"
    untuned = f"{row['untuned_images_per_s']:.1f}" if row["untuned_images_per_s"] else "-"
    torch_speed = f"{row['torch_images_per_s']:.1f}" if row["torch_images_per_s"] else "-"
    torch_peak = (f"{100 * row['torch_fraction_of_peak']:.0f}%"
                  if row["torch_fraction_of_peak"] else "-")
    lines.append(f"{name:<22}{row['jax_images_per_s']:>10.1f}"
                 f"{100 * row['fraction_of_peak']:>8.0f}%{untuned:>9}"
                 f"{_ratio(row['speedup_vs_untuned']):>9}{torch_speed:>15}{torch_peak:>9}"
                 f"{_ratio(row['jax_vs_torch']):>13}")
  lines.append(f"fed by grain ({results['rows'][0]['model']}): "
               f"{results['grain_images_per_s']:.1f} images/s "
               f"(pipeline overhead {100 * results['pipeline_overhead']:.1f}%)")
  if not any(row["torch_images_per_s"] for row in results["rows"]):
    lines.append("PyTorch eager not measured (pip install '.[torch]')")
  return "\n".join(lines)
