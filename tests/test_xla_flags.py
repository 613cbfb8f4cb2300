"""The XLA:CPU flags `import vision` adds: kept out of the user's way, and in effect."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vision import xla_flags

from conftest import REPO, child_env


def test_added_flags_keep_the_users_own():
  assert xla_flags.with_cpu_flags("") == (
      "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution --xla_cpu_use_onednn=true")
  mine = "--xla_force_host_platform_device_count=4 --xla_cpu_use_onednn=false"
  assert xla_flags.with_cpu_flags(mine) == (
      mine + " --xla_cpu_experimental_ynn_fusion_type=-individual_convolution")


@pytest.mark.parametrize("opt_out, expected", [("1", True), ("0", False)])
def test_importing_vision_sets_them_unless_opted_out(opt_out, expected):
  env = child_env(VISION_XLA_CPU_FLAGS=opt_out, XLA_FLAGS="--xla_cpu_enable_fast_math=false")
  out = subprocess.run(
      [sys.executable, "-c", "import os, vision; print(os.environ['XLA_FLAGS'])"],
      cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout
  assert out.startswith("--xla_cpu_enable_fast_math=false")
  assert ("--xla_cpu_use_onednn=true" in out) == expected


_CONV_HLO = """
import jax, jax.numpy as jnp, vision
conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
    x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
print(conv.lower(jnp.ones((8, 16, 16, 32)), jnp.ones((3, 3, 32, 32))).compile().as_text())
"""


@pytest.mark.parametrize("opt_out, in_ynnpack", [("1", False), ("0", True)])
def test_flags_take_convolutions_out_of_ynnpack(opt_out, in_ynnpack):
  env = child_env(VISION_XLA_CPU_FLAGS=opt_out, XLA_FLAGS="")
  hlo = subprocess.run([sys.executable, "-c", _CONV_HLO], cwd=REPO, env=env,
                       capture_output=True, text=True, check=True).stdout
  assert "convolution(" in hlo
  assert ("__ynn_fusion" in hlo) == in_ynnpack
