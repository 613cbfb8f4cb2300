"""Training-speed benchmark: JAX's train step against the matmul peak, untuned XLA and the
fastest PyTorch, and the grain pipeline's overhead.

    results = run_benchmark(BenchmarkOptions())             # the suite, or model="resnet18"
    row = results["rows"][0]     # jax_images_per_s, fraction_of_peak, best_torch, ...

All figures come from one run. JAX's step and PyTorch's (eager NCHW,
channels_last, torch.compile, both; `vision.torch_speed`) are timed in turns,
one step each per round, so that their ratios hold on a shared, noisy machine
even when the absolute figures drift; `load_average` records how busy it was.
The untuned column (XLA's default CPU flags, `conv_impl='lax'`: what a plain
`nnx.Conv` model gets) runs in a child process, because XLA reads its flags once.
The other suites live in `vision.benchmark_realistic` (224 px, inference
against PyTorch and ONNX Runtime) and `vision.benchmark_accelerator`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
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

from vision import parallel, profiling, torch_speed, xla_flags
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
  # PyTorch's settings to time (vision.torch_speed.VARIANTS), best of them for `best_torch`.
  torch_variants: tuple[str, ...] = torch_speed.VARIANTS
  # Also time the step untuned (XLA's default flags, conv_impl='lax'), in a child process.
  compare_untuned: bool = True
  # The models' compute dtype (parameters stay float32).
  dtype: str = "float32"
  # Also trace JAX's step with jax.profiler and report its time per HLO op (`op_profile`).
  profile: bool = False

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


@dataclasses.dataclass
class Timings:
  """`time_interleaved`'s result: median seconds per call, the first call's seconds, errors."""
  seconds: dict[str, float]
  first_call: dict[str, float]
  errors: dict[str, str]


def error_line(error: Exception) -> str:
  """An exception as one line: its type and the first line of its message."""
  return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def time_interleaved(runners: dict[str, Callable[[], object]], repeats: int) -> Timings:
  """Times blocking callables in turns: one call of each per round, `repeats` rounds.

  On a shared machine the load drifts; taking turns lets the drift hit every
  runner alike, so their ratios hold even when the absolute figures do not.
  Each runner's first call (compilation, caches) is timed apart; a runner that
  raises there is dropped and its error (one line) reported.
  """
  first_call, errors, live = {}, {}, {}
  for name, runner in runners.items():
    start = time.perf_counter()
    try:
      runner()
    except Exception as error:  # pylint: disable=broad-except  # reported, the others go on
      errors[name] = error_line(error)
      continue
    first_call[name] = time.perf_counter() - start
    live[name] = runner
  times = {name: [] for name in live}
  for _ in range(repeats):
    for name, runner in live.items():
      start = time.perf_counter()
      runner()
      times[name].append(time.perf_counter() - start)
  return Timings({name: float(np.median(t)) for name, t in times.items()}, first_call, errors)


def matmul_peak_flops(size: int = 4096, repeats: int = 5, dtype=jnp.float32) -> float:
  """FLOP/s of a large square matmul on the default device: its practical peak in `dtype`."""
  a = jnp.asarray(np.random.default_rng(0).standard_normal((size, size), np.float32), dtype)
  matmul = jax.jit(lambda a: a @ a)
  seconds = time_per_call(lambda: matmul(a).block_until_ready(), repeats)
  return 2 * size**3 / seconds


def _random_batch(options: BenchmarkOptions, workload: Workload,
                  rng: np.random.Generator) -> dict[str, np.ndarray]:
  shape = (options.batch_size, workload.image_size, workload.image_size, workload.channels)
  return {"image": rng.standard_normal(shape, np.float32),
          "label": rng.integers(0, options.num_classes, options.batch_size).astype(np.int32)}


def _jax_steps(options: BenchmarkOptions, workload: Workload, conv_impl: str,
               mesh: jax.sharding.Mesh | None = None) -> tuple[Steps, jax.sharding.Mesh]:
  model_options = ModelOptions(options.num_classes, workload.channels, workload.image_size,
                               dtype=options.dtype, widths=workload.widths,
                               hidden=workload.hidden, conv_impl=conv_impl)
  model = create_model(workload.model, model_options, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.sgd(0.01, momentum=0.9), wrt=nnx.Param)
  mesh = mesh or parallel.make_mesh()
  return Steps.create(model, optimizer, mesh), mesh


def jax_train_runner(options: BenchmarkOptions, workload: Workload, conv_impl: str = "auto",
                     mesh: jax.sharding.Mesh | None = None) -> tuple[Callable[[], None], float]:
  """The compiled train step on a fixed in-memory batch as a blocking callable, and its FLOPs.

  `mesh` (default: every device) splits the batch of `options.batch_size` over its devices.
  """
  steps, mesh = _jax_steps(options, workload, conv_impl, mesh)
  batch = parallel.to_global(_random_batch(options, workload, np.random.default_rng(0)), mesh)
  rng = jax.random.key(0)
  state = steps.state
  train = steps.train.lower(state, batch, rng).compile()
  flops = float(train.cost_analysis()["flops"])

  def one_step():
    nonlocal state
    state, metrics = train(state, batch, rng)
    jax.block_until_ready(metrics)

  return one_step, flops


def jax_train_speed(options: BenchmarkOptions, workload: Workload,
                    conv_impl: str = "auto") -> dict[str, float]:
  """Images/s and achieved FLOP/s of the compiled train step on in-memory arrays."""
  one_step, flops = jax_train_runner(options, workload, conv_impl)
  seconds = time_per_call(one_step, options.steps)
  return {"jax_images_per_s": options.batch_size / seconds, "step_flops": flops,
          "achieved_flops": flops / seconds}


def grain_fed_speed(options: BenchmarkOptions, workload: Workload) -> dict[str, float]:
  """Images/s of the step fed by the grain pipeline (read, augment, normalise, batch), and
  of the same compiled step on an in-memory batch, timed in alternating blocks."""
  steps, mesh = _jax_steps(options, workload, "auto")
  count = options.batch_size * 8
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
  fixed = parallel.to_global(_random_batch(options, workload, rng), mesh)
  state, key = steps.state, jax.random.key(0)

  def run(feed: Callable[[], dict], count: int) -> float:
    nonlocal state
    start = time.perf_counter()
    for _ in range(count):
      state, metrics = steps.train(state, feed(), key)
      jax.block_until_ready(metrics)
    return time.perf_counter() - start

  from_grain = lambda: parallel.to_global(next(loader), mesh)
  run(from_grain, 2)  # compiles, and fills the read-ahead buffer
  # Blocks of steps (not single steps) so that the read-ahead thread's work stays inside the
  # grain-fed block; alternating so that load drift hits both alike.
  in_memory = grain = 0.0
  block, rounds = max(5, options.steps), 8
  for _ in range(rounds):
    in_memory += run(lambda: fixed, block)
    grain += run(from_grain, block)
  steps_run = rounds * block
  return {"in_memory_images_per_s": options.batch_size * steps_run / in_memory,
          "grain_images_per_s": options.batch_size * steps_run / grain}


def torch_train_runners(options: BenchmarkOptions,
                        workload: Workload) -> dict[str, Callable[[], None]]:
  """PyTorch's train step on the twin in each of `options.torch_variants` (none without torch
  or a twin)."""
  if not options.torch or not torch_installed():
    return {}
  spec = torch_speed.TorchInput(options.batch_size, workload.channels, workload.image_size,
                                options.num_classes, workload.widths, workload.hidden)
  torch_speed.reset_compiled()
  try:
    return {variant: torch_speed.torch_train_step(workload.model, spec, variant)
            for variant in options.torch_variants}
  except ValueError:  # no PyTorch twin for this model
    return {}


def torch_installed() -> bool:
  return importlib.util.find_spec("torch") is not None


# Timed steps of the untuned reference: it runs up to 27 s a step (ResNet-18), and its
# ratio to the tuned step is large (1.6-6x), so two steps measure it well enough and keep
# the default suite within its 15 minutes.
UNTUNED_STEPS = 2


def untuned_speed(options: BenchmarkOptions, workload: Workload) -> float:
  """Images/s of the same step with XLA's default CPU flags and `conv_impl='lax'`
  (`UNTUNED_STEPS` timed steps at most)."""
  options = dataclasses.replace(options, steps=min(options.steps, UNTUNED_STEPS))
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


# JSON keys of PyTorch's images/s per setting ("eager" keeps the first benchmark's key).
TORCH_KEYS = {"eager": "torch_images_per_s",
              "channels_last": "torch_channels_last_images_per_s",
              "compile": "torch_compile_images_per_s",
              "compile_channels_last": "torch_compile_channels_last_images_per_s"}


def torch_columns(jax_images_per_s: float, torch_images_per_s: dict[str, float],
                  timings: Timings, flops_per_image: float, peak: float) -> dict:
  """The PyTorch part of a row: images/s per setting, compile seconds, the best setting."""
  columns = {key: torch_images_per_s.get(variant) for variant, key in TORCH_KEYS.items()}
  for variant in ("compile", "compile_channels_last"):
    # The first call compiles (and also runs one step, which is not compilation).
    if variant in timings.first_call:
      columns[f"torch_{variant}_seconds"] = (timings.first_call[variant]
                                             - timings.seconds[variant])
    else:
      columns[f"torch_{variant}_seconds"] = None
  best = max(torch_images_per_s, key=torch_images_per_s.get) if torch_images_per_s else None
  best_speed = torch_images_per_s[best] if best else None
  eager = torch_images_per_s.get("eager")
  columns.update({
      "torch_errors": {name: error for name, error in timings.errors.items() if name != "jax"},
      # PyTorch runs the same architecture, so it does the same FLOPs per image.
      "torch_fraction_of_peak": flops_per_image * eager / peak if eager else None,
      "jax_vs_torch": jax_images_per_s / eager if eager else None,
      "best_torch_variant": best,
      "best_torch_images_per_s": best_speed,
      "best_torch_fraction_of_peak": flops_per_image * best_speed / peak if best else None,
      # JAX's images/s over the fastest PyTorch setting's.
      "best_torch": jax_images_per_s / best_speed if best else None,
  })
  return columns


def measure_train_step(options: BenchmarkOptions, workload: Workload, peak: float) -> dict:
  jax_step, flops = jax_train_runner(options, workload)
  timings = time_interleaved({"jax": jax_step, **torch_train_runners(options, workload)},
                             options.steps)
  if "jax" in timings.errors:
    raise RuntimeError(f"the JAX train step of {workload.model} failed: {timings.errors['jax']}")
  images_per_s = options.batch_size / timings.seconds["jax"]
  profile = profiling.op_profile(jax_step) if options.profile else None
  untuned = untuned_speed(options, workload) if options.compare_untuned else None
  torch_speeds = {name: options.batch_size / seconds
                  for name, seconds in timings.seconds.items() if name != "jax"}
  return {
      "model": workload.model, "image_size": workload.image_size,
      "channels": workload.channels, "batch_size": options.batch_size,
      "conv_impl": "auto",
      "jax_images_per_s": images_per_s, "step_flops": flops,
      "achieved_flops": flops * images_per_s / options.batch_size,
      "fraction_of_peak": flops * images_per_s / options.batch_size / peak,
      "untuned_images_per_s": untuned,
      "speedup_vs_untuned": images_per_s / untuned if untuned else None,
      **torch_columns(images_per_s, torch_speeds, timings, flops / options.batch_size, peak),
      # Microseconds per step of the 20 costliest HLO ops and of every kind of op.
      "op_profile": ({"ops": dict(list(profile.ops.items())[:20]), "kinds": profile.kinds}
                     if profile else None),
  }


def machine_load() -> list[float]:
  """The 1-, 5- and 15-minute load averages (what `uptime` shows): how busy the machine was."""
  return [round(value, 2) for value in os.getloadavg()]


def machine_info(load_before: list[float]) -> dict:
  """Where and when the figures were taken; `load_average` before the first and after the last."""
  return {"date": time.strftime("%Y-%m-%d %H:%M"),
          "load_average": {"before": load_before, "after": machine_load()},
          "devices": jax.device_count(), "backend": jax.default_backend(),
          "cpu_count": os.cpu_count(), "xla_flags": os.environ.get("XLA_FLAGS", "")}


def run_benchmark(options: BenchmarkOptions) -> dict:
  """Every figure from one process. Top-level model keys repeat the first row's (`rows[0]`)."""
  load_before = machine_load()
  workloads = options.workloads()
  peak = matmul_peak_flops(options.matmul_size)
  rows = [measure_train_step(options, workload, peak) for workload in workloads]
  # The pipeline overhead on the first workload: the quickstart's, where steps are shortest.
  fed = grain_fed_speed(options, workloads[0])
  return {
      **rows[0],
      "suite": "default",
      **machine_info(load_before),
      "batch_size": options.batch_size,
      "peak_flops": peak,
      **fed,
      # The share of training time the input pipeline adds (against the in-memory step
      # timed in the same blocks).
      "pipeline_overhead": max(0.0, 1.0 - fed["grain_images_per_s"]
                               / fed["in_memory_images_per_s"]),
      "rows": rows,
  }


def format_ratio(value: float | None) -> str:
  return f"{value:.2f}x" if value else "-"


def format_number(value: float | None) -> str:
  return f"{value:.1f}" if value else "-"


def format_percent(value: float | None) -> str:
  return f"{100 * value:.0f}%" if value else "-"


def describe_machine(results: dict) -> str:
  load = results["load_average"]
  return (f"{results['devices']} {results['backend']} device(s), {results['cpu_count']} CPUs; "
          f"load average {load['before'][0]:.2f} before, {load['after'][0]:.2f} after; "
          f"{results['date']}")


def format_rows(rows: list[dict]) -> str:
  """Train-step rows as a table: JAX, untuned, each PyTorch setting, the best's share of peak."""
  lines = ["train step, images/s (PyTorch: eager NCHW, channels_last, torch.compile, both)",
           f"{'model':<22}{'batch':>6}{'JAX':>9}{'of peak':>8}{'untuned':>9}{'speedup':>8}"
           f"{'eager':>9}{'ch-last':>9}{'compile':>9}{'both':>9}{'best of peak':>13}"
           f"{'JAX/best':>9}"]
  compile_notes = []
  for row in rows:
    name = f"{row['model']} {row['image_size']}x{row['image_size']}x{row['channels']}"
    lines.append(
        f"{name:<22}{row['batch_size']:>6}{row['jax_images_per_s']:>9.1f}"
        f"{format_percent(row['fraction_of_peak']):>8}"
        f"{format_number(row['untuned_images_per_s']):>9}"
        f"{format_ratio(row['speedup_vs_untuned']):>8}"
        + "".join(f"{format_number(row[key]):>9}" for key in TORCH_KEYS.values())
        + f"{format_percent(row['best_torch_fraction_of_peak']):>13}"
        f"{format_ratio(row['best_torch']):>9}")
    compile_notes += compile_note(row)
    for variant, error in row["torch_errors"].items():
      lines.append(f"  PyTorch {variant} failed: {error}")
    if row.get("op_profile"):
      lines.append(profiling.format_op_profile(profiling.OpProfile(**row["op_profile"])))
  if compile_notes:
    lines.append("torch.compile warm-up: " + "; ".join(compile_notes))
  return "\n".join(lines)


def compile_note(row: dict) -> list[str]:
  """'resnet18 21 s, 25 s (channels_last)': torch.compile's warm-up seconds in a row."""
  seconds = [f"{row[f'torch_{v}_seconds']:.0f} s{' (channels_last)' if 'channels' in v else ''}"
             for v in ("compile", "compile_channels_last") if row.get(f"torch_{v}_seconds")]
  return [f"{row['model']} {', '.join(seconds)}"] if seconds else []


def format_results(results: dict) -> str:
  lines = [f"batch {results['batch_size']}, fp32; {describe_machine(results)}; matmul peak "
           f"{results['peak_flops'] / 1e9:.1f} GFLOP/s; XLA flags {results['xla_flags'] or '(none)'}",
           format_rows(results["rows"]),
           f"fed by grain ({results['rows'][0]['model']}): "
           f"{results['grain_images_per_s']:.1f} images/s vs "
           f"{results['in_memory_images_per_s']:.1f} in memory "
           f"(pipeline overhead {100 * results['pipeline_overhead']:.1f}%)"]
  if not any(row["torch_images_per_s"] for row in results["rows"]):
    lines.append("PyTorch not measured (pip install '.[torch]')")
  return "\n".join(lines)
