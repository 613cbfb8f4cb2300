"""A few minutes' check of an accelerator machine (GPU or TPU): does the framework use it well?

    results = run_accelerator(AcceleratorOptions(), quickstart_config)
    results["accelerator"]["step"]["fraction_of_peak"]          # ResNet-50, bfloat16, one device
    results["accelerator"]["data_parallel"]["scaling"]          # every device, vs one × count

Three measurements, each timed after compilation:
  * the quickstart (the config the caller passes, at its smoke size) trained end
    to end with `model.conv_impl='auto'` (which picks `lax` convolutions off CPU):
    wall seconds and test accuracy;
  * ResNet-50's train step at 224 px in bfloat16 on one device: images/s and the
    fraction of the device's measured bfloat16 matmul peak (XLA's FLOP count of
    the step × steps/s over the FLOP/s of a large bfloat16 matmul);
  * the same step data-parallel over every device (the batch split over a mesh
    of all of them, gradients all-reduced): images/s and the scaling against the
    one-device step × the device count.
On a CPU host it runs too (fake devices: XLA_FLAGS=--xla_force_host_platform_device_count=N),
which is how the tests check it; only an accelerator's figures say anything about
accelerators.
"""

from __future__ import annotations

import dataclasses
import pathlib
import tempfile
import time

import jax
import jax.numpy as jnp
import ml_collections

from vision import benchmark
from vision.train import loop


@dataclasses.dataclass(frozen=True)
class AcceleratorOptions:
  model: str = "resnet50"
  image_size: int = 224
  # Images per device per step.
  batch_size: int = 128
  dtype: str = "bfloat16"
  num_classes: int = 1000
  steps: int = 10
  matmul_size: int = 8192


def quickstart_figures(config: ml_collections.ConfigDict) -> dict:
  """Trains `config` end to end (conv_impl 'auto') in a temporary workdir: seconds, accuracy."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.conv_impl = "auto"
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    report = loop.train(config, pathlib.Path(workdir) / "run")
    seconds = time.perf_counter() - start
  return {"model": config.model.name, "seconds": seconds,
          "test_accuracy": float(report["accuracy"]), "conv_impl": "auto"}


def _step_figures(options: AcceleratorOptions, mesh: jax.sharding.Mesh, peak: float) -> dict:
  devices = mesh.devices.size
  bench = benchmark.BenchmarkOptions(batch_size=options.batch_size * devices,
                                     num_classes=options.num_classes, steps=options.steps,
                                     dtype=options.dtype)
  workload = benchmark.Workload(options.model, options.image_size, 3)
  one_step, flops = benchmark.jax_train_runner(bench, workload, mesh=mesh)
  seconds = benchmark.time_per_call(one_step, options.steps)
  return {"model": options.model, "image_size": options.image_size, "dtype": options.dtype,
          "devices": devices, "batch_size": bench.batch_size,
          "images_per_s": bench.batch_size / seconds,
          # XLA's cost analysis of a partitioned program counts one device's share.
          "step_flops_per_device": flops,
          "fraction_of_peak": flops / seconds / peak}


def run_accelerator(options: AcceleratorOptions = AcceleratorOptions(),
                    quickstart_config: ml_collections.ConfigDict | None = None) -> dict:
  """The accelerator suite; its figures are under the JSON key `accelerator`."""
  load_before = benchmark.machine_load()
  devices = jax.devices()
  peak = benchmark.matmul_peak_flops(options.matmul_size, dtype=jnp.dtype(options.dtype))
  quickstart = quickstart_figures(quickstart_config) if quickstart_config is not None else None
  one = jax.make_mesh((1,), ("data",), devices=devices[:1])
  step = _step_figures(options, one, peak)
  data_parallel = _step_figures(options, jax.make_mesh((len(devices),), ("data",)), peak)
  data_parallel["scaling"] = data_parallel["images_per_s"] / (step["images_per_s"] * len(devices))
  return {
      "suite": "accelerator",
      **benchmark.machine_info(load_before),
      "device_kind": devices[0].device_kind,
      "peak_flops": peak, "peak_dtype": options.dtype,
      "accelerator": {"quickstart": quickstart, "step": step, "data_parallel": data_parallel},
  }


def format_accelerator(results: dict) -> str:
  figures = results["accelerator"]
  lines = [f"accelerator suite: {results['device_kind']}; {benchmark.describe_machine(results)}; "
           f"{results['peak_dtype']} matmul peak {results['peak_flops'] / 1e12:.2f} TFLOP/s"]
  if figures["quickstart"]:
    quick = figures["quickstart"]
    lines.append(f"quickstart ({quick['model']}, smoke, conv_impl auto): {quick['seconds']:.1f} s, "
                 f"test accuracy {quick['test_accuracy']:.4f}")
  for label, row in (("one device", figures["step"]), ("data-parallel", figures["data_parallel"])):
    lines.append(f"{row['model']} {row['image_size']} px {row['dtype']} train step, {label} "
                 f"({row['devices']} device(s), batch {row['batch_size']}): "
                 f"{row['images_per_s']:.1f} images/s, "
                 f"{100 * row['fraction_of_peak']:.0f}% of peak"
                 + (f", scaling {row['scaling']:.2f}" if "scaling" in row else ""))
  return "\n".join(lines)
