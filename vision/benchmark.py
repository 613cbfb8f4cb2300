"""Training-speed benchmark: JAX train step vs the matmul peak, grain, and PyTorch eager.

    results = run_benchmark(BenchmarkOptions(model="resnet18", batch_size=128, image_size=32))
    results["jax_images_per_s"], results["achieved_flops"] / results["peak_flops"]

All figures come from one process, one after the other, so their ratios are
meaningful on a shared, noisy machine even when the absolute numbers drift.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vision import parallel
from vision.data import pipeline
from vision.data.sources import ArraySource
from vision.models import ModelOptions, create_model
from vision.train.step import Steps


@dataclasses.dataclass(frozen=True)
class BenchmarkOptions:
  model: str = "resnet18"
  batch_size: int = 128
  image_size: int = 32
  channels: int = 3
  num_classes: int = 10
  steps: int = 5
  matmul_size: int = 4096
  torch: bool = True


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


def _random_batch(options: BenchmarkOptions, rng: np.random.Generator) -> dict[str, np.ndarray]:
  shape = (options.batch_size, options.image_size, options.image_size, options.channels)
  return {"image": rng.standard_normal(shape, np.float32),
          "label": rng.integers(0, options.num_classes, options.batch_size).astype(np.int32)}


def _jax_steps(options: BenchmarkOptions) -> tuple[Steps, jax.sharding.Mesh]:
  model_options = ModelOptions(options.num_classes, options.channels, options.image_size)
  model = create_model(options.model, model_options, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.sgd(0.01, momentum=0.9), wrt=nnx.Param)
  mesh = parallel.make_mesh()
  return Steps.create(model, optimizer, mesh), mesh


def jax_train_speed(options: BenchmarkOptions) -> dict[str, float]:
  """Images/s and achieved FLOP/s of the compiled train step on in-memory arrays."""
  steps, mesh = _jax_steps(options)
  batch = parallel.to_global(_random_batch(options, np.random.default_rng(0)), mesh)
  rng = jax.random.key(0)
  state = steps.state
  flops = steps.train.lower(state, batch, rng).compile().cost_analysis()["flops"]

  def one_step():
    nonlocal state
    state, metrics = steps.train(state, batch, rng)
    jax.block_until_ready(metrics)

  seconds = time_per_call(one_step, options.steps)
  return {"jax_images_per_s": options.batch_size / seconds, "step_flops": float(flops),
          "achieved_flops": float(flops) / seconds}


def grain_fed_speed(options: BenchmarkOptions) -> float:
  """Images/s of the same step fed by the grain pipeline (decode, augment, batch)."""
  steps, mesh = _jax_steps(options)
  count = options.batch_size * (options.steps + 2)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (count, options.image_size, options.image_size, options.channels),
                        dtype=np.uint8)
  records = ArraySource(images, rng.integers(0, options.num_classes, count))
  data_config = ml_collections.ConfigDict(
      {"crop_padding": 4, "flip": True, "worker_count": 0})
  spec = pipeline.ImageSpec(options.image_size, options.channels,
                            (0.5,) * options.channels, (0.5,) * options.channels)
  loader = pipeline.train_iterator(records, data_config, spec,
                                   batch_size=options.batch_size, seed=0)
  state, key = steps.state, jax.random.key(0)

  def one_step():
    nonlocal state
    state, metrics = steps.train(state, parallel.to_global(next(loader), mesh), key)
    jax.block_until_ready(metrics)

  return options.batch_size / time_per_call(one_step, options.steps)


def torch_train_speed(options: BenchmarkOptions) -> float | None:
  """Images/s of the same architecture's train step in PyTorch eager, if torch is installed."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  from vision.torch_reference import make_torch_model  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  model = make_torch_model(options.model, options.num_classes, options.channels,
                           options.image_size).train()
  optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
  images = torch.randn(options.batch_size, options.channels, options.image_size, options.image_size)
  labels = torch.randint(0, options.num_classes, (options.batch_size,))

  def one_step():
    optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()

  return options.batch_size / time_per_call(one_step, options.steps)


def run_benchmark(options: BenchmarkOptions) -> dict[str, float | None | str]:
  peak = matmul_peak_flops(options.matmul_size)
  jax_speed = jax_train_speed(options)
  grain_speed = grain_fed_speed(options)
  torch_speed = torch_train_speed(options) if options.torch else None
  results = {
      "model": options.model, "batch_size": options.batch_size,
      "image_size": options.image_size, "devices": jax.device_count(),
      "backend": jax.default_backend(),
      **jax_speed,
      "peak_flops": peak,
      "fraction_of_peak": jax_speed["achieved_flops"] / peak,
      "grain_images_per_s": grain_speed,
      # The share of training time the input pipeline adds.
      "pipeline_overhead": max(0.0, 1.0 - grain_speed / jax_speed["jax_images_per_s"]),
      "torch_images_per_s": torch_speed,
      "jax_vs_torch": jax_speed["jax_images_per_s"] / torch_speed if torch_speed else None,
  }
  return results


def format_results(results: dict) -> str:
  lines = [f"model {results['model']}, batch {results['batch_size']}, "
           f"{results['image_size']}x{results['image_size']}, fp32, "
           f"{results['devices']} {results['backend']} device(s)"]
  lines.append(f"  JAX train step        {results['jax_images_per_s']:8.1f} images/s")
  lines.append(f"  achieved / peak       {results['achieved_flops'] / 1e9:8.1f} / "
               f"{results['peak_flops'] / 1e9:.1f} GFLOP/s ({100 * results['fraction_of_peak']:.0f}%)")
  lines.append(f"  fed by grain          {results['grain_images_per_s']:8.1f} images/s "
               f"(pipeline overhead {100 * results['pipeline_overhead']:.1f}%)")
  if results["torch_images_per_s"]:
    lines.append(f"  PyTorch eager         {results['torch_images_per_s']:8.1f} images/s "
                 f"(JAX/PyTorch = {results['jax_vs_torch']:.2f}x)")
  else:
    lines.append("  PyTorch eager         not measured (pip install '.[torch]')")
  return "\n".join(lines)

