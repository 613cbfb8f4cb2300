"""Tiny registered models with one op a converter cannot take, for the export error tests.

    import unconvertible_models            # registers "gather_net" and "xor_net" in MODELS

`gather_net` reads the first image row with NumPy indexing, which under the
export's free batch dimension lowers to `stablehlo.dynamic_gather`: the TFLite
converter (and so the ONNX route) has no conversion for it. `xor_net` passes
through an integer XOR, which TFLite converts (BITWISE_XOR) but tf2onnx does
not. A subprocess imports this module to get the same registry.
"""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp

from vision.models import MODELS, ModelOptions


class _Unconvertible(nnx.Module):

  def __init__(self, options: ModelOptions, rngs: nnx.Rngs):
    features = options.image_size * options.in_channels
    self.head = nnx.Linear(features, options.num_classes, rngs=rngs)

  def layer_groups(self) -> list[tuple[str, ...]]:
    return [("head",)]

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.head(self.features(x))


class GatherNet(_Unconvertible):

  def features(self, x: jax.Array) -> jax.Array:
    return x[:, 0].reshape(x.shape[0], -1)


class XorNet(_Unconvertible):

  def features(self, x: jax.Array) -> jax.Array:
    row = jnp.mean(x, axis=1).reshape(x.shape[0], -1)
    bits = (row * 100).astype(jnp.int32) ^ 5
    return bits.astype(jnp.float32) / 100


MODELS["gather_net"] = GatherNet
MODELS["xor_net"] = XorNet


def crash(signal_number: int) -> None:
  """Dies as a converter's native code may (a child of `converters.run_isolated`)."""
  import os  # pylint: disable=import-outside-toplevel  (spawned children import this module)
  os.kill(os.getpid(), signal_number)
