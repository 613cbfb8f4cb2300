"""Folding BatchNorm into convolutions keeps every family's eval-mode logits."""

from flax import nnx
import jax
import numpy as np
import pytest

pytestmark = pytest.mark.slow  # builds four families

from vision.export.fold import fold_batch_norms
from vision.models import ModelOptions, create_model

# One family per way of naming a (convolution, BatchNorm) pair, and one without BatchNorm. Every
# family's folded export is also checked against its unfolded JAX model by
# tests/test_export_families.py.
CASES = {"small_cnn": True, "resnet18": True, "mobilenet_v2": True, "vit_ti16": False}


def _trained_like(model: nnx.Module, seed: int) -> None:
  """Running statistics and affine parameters away from their initial values, as after training."""
  keys = iter(jax.random.split(jax.random.key(seed), 4096))
  for _, node in nnx.iter_graph(model):
    if isinstance(node, nnx.BatchNorm):
      shape = node.mean[...].shape
      node.mean[...] = jax.random.normal(next(keys), shape) * 0.5
      node.var[...] = jax.random.uniform(next(keys), shape, minval=0.2, maxval=3.0)
      node.scale[...] = jax.random.uniform(next(keys), shape, minval=0.5, maxval=1.5)
      node.bias[...] = jax.random.normal(next(keys), shape) * 0.2


@nnx.jit
def _logits(model: nnx.Module, images: jax.Array) -> jax.Array:
  return model(images)


@pytest.mark.parametrize("arch", list(CASES))
def test_folded_model_gives_the_same_logits(arch):
  model = create_model(arch, ModelOptions(10, 3, 32, conv_impl="lax"), rngs=nnx.Rngs(0))
  _trained_like(model, seed=1)
  model.eval()
  images = jax.random.normal(jax.random.key(2), (4, 32, 32, 3))
  expected = np.asarray(_logits(model, images))
  folded = nnx.clone(model)
  count = fold_batch_norms(folded)
  assert (count > 0) == CASES[arch], count
  assert not any(isinstance(node, nnx.BatchNorm) for _, node in nnx.iter_graph(folded))
  np.testing.assert_allclose(np.asarray(_logits(folded, images)), expected, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(np.asarray(_logits(model, images)), expected)  # left untouched
