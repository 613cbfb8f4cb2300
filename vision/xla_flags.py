"""XLA:CPU settings that make convolutional training faster; applied when `vision` is imported.

    import vision                      # before the first JAX computation
    vision.xla_flags.CPU_FLAGS         # what was added to $XLA_FLAGS
    VISION_XLA_CPU_FLAGS=0 python ...  # opt out

XLA reads `$XLA_FLAGS` once, when its first backend starts, so importing
`vision` (or any `vision.*` module) before running JAX code is what applies
them. A flag the user already set in `$XLA_FLAGS` is left as it is. They only
concern the CPU backend; GPU and TPU runs ignore them.

Measured with `python -m experiments.benchmark` (README "Speed"):
  * convolutions go to oneDNN instead of YNNPACK: XLA:CPU's default sends
    every convolution, the weight-gradient ones too, to YNNPACK, which runs
    them far below the matmul peak; oneDNN is what PyTorch uses on CPU.
    YNNPACK keeps matmuls, reductions and elementwise fusions, where it is
    the fastest (turning it off altogether makes reductions 15× slower).
"""

from __future__ import annotations

import os

CPU_FLAGS = {
    "--xla_cpu_experimental_ynn_fusion_type": "-individual_convolution",
    "--xla_cpu_use_onednn": "true",
}

OPT_OUT = "VISION_XLA_CPU_FLAGS"

# $XLA_FLAGS as it was before `apply_cpu_flags` (what a child process without them should get).
user_xla_flags = os.environ.get("XLA_FLAGS", "")


def with_cpu_flags(xla_flags: str) -> str:
  """`xla_flags` plus each of `CPU_FLAGS` it does not set already."""
  present = {flag.split("=", 1)[0] for flag in xla_flags.split()}
  added = [f"{name}={value}" for name, value in CPU_FLAGS.items() if name not in present]
  return " ".join([xla_flags.strip(), *added]).strip()


def apply_cpu_flags() -> None:
  """Adds `CPU_FLAGS` to `$XLA_FLAGS` unless `$VISION_XLA_CPU_FLAGS` is 0."""
  if os.environ.get(OPT_OUT, "1") == "0":
    return
  os.environ["XLA_FLAGS"] = with_cpu_flags(os.environ.get("XLA_FLAGS", ""))
