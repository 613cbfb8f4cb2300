"""Folding BatchNorm into convolutions keeps every family's eval-mode logits."""

from flax import nnx
import jax
import numpy as np
import pytest

pytestmark = pytest.mark.slow  # builds every family (about a minute on 2 cores)

from vision.export.fold import fold_batch_norms
from vision.export.matrix import SMALLEST_VARIANTS
from vision.models import ModelOptions, create_model

# Families whose convolutions are followed by BatchNorm (ViT and ConvNeXt use LayerNorm).
WITH_BATCH_NORM = {"small_cnn", "resnet18", "mobilenet_v2", "mobilenet_v3_small",
                   "efficientnet_b0", "efficientnet_lite0"}


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


@pytest.mark.parametrize("arch", sorted(set(SMALLEST_VARIANTS.values())))
def test_folded_model_gives_the_same_logits(arch):
  model = create_model(arch, ModelOptions(10, 3, 32, conv_impl="lax"), rngs=nnx.Rngs(0))
  _trained_like(model, seed=1)
  model.eval()
  images = jax.random.normal(jax.random.key(2), (4, 32, 32, 3))
  expected = np.asarray(model(images))
  folded = nnx.clone(model)
  count = fold_batch_norms(folded)
  assert (count > 0) == (arch in WITH_BATCH_NORM), count
  assert not any(isinstance(node, nnx.BatchNorm) for _, node in nnx.iter_graph(folded))
  np.testing.assert_allclose(np.asarray(folded(images)), expected, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(model(images)), expected)  # the original is untouched
