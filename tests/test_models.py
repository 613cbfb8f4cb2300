"""The model registry, and the architectures against their PyTorch twins."""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from vision import parallel
from vision.config import ConfigError
from vision.models import MODELS, ModelOptions, create_model
from vision.torch_reference import count_parameters, make_torch_model
from vision.train.step import Steps


def _count(model: nnx.Module) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("name, image_size, channels", [
    ("small_cnn", 28, 1), ("resnet18", 32, 3), ("resnet18", 224, 3), ("resnet34", 32, 1),
    ("resnet50", 64, 3), ("mobilenet_v2", 32, 3), ("mobilenet_v2", 32, 1), ("vit_ti16", 32, 3),
    ("vit_s16", 48, 1),
])
def test_same_parameter_count_as_the_pytorch_twin(name, image_size, channels):
  options = ModelOptions(num_classes=10, in_channels=channels, image_size=image_size)
  model = create_model(name, options, rngs=nnx.Rngs(0))
  twin = make_torch_model(name, 10, channels, image_size)
  assert _count(model) == count_parameters(twin)


def test_torchvision_resnet50_imagenet_size():
  # The ImageNet stem and 1000 classes: exactly torchvision's 25,557,032 parameters.
  model = create_model("resnet50", ModelOptions(num_classes=1000), rngs=nnx.Rngs(0))
  assert _count(model) == 25_557_032


@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
def test_forward_shapes_and_bf16_compute(name):
  options = ModelOptions(num_classes=7, in_channels=1, image_size=28, dtype="bfloat16")
  model = create_model(name, options, rngs=nnx.Rngs(0))
  logits = model(jnp.ones((2, 28, 28, 1)))
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  params = jax.tree.leaves(nnx.state(model, nnx.Param))
  assert all(p.dtype == jnp.float32 for p in params)


def test_small_stem_is_chosen_below_64_pixels():
  small = create_model("resnet18", ModelOptions(10, 3, 32), rngs=nnx.Rngs(0))
  large = create_model("resnet18", ModelOptions(10, 3, 224), rngs=nnx.Rngs(0))
  assert small.conv1.kernel_size == (3, 3) and large.conv1.kernel_size == (7, 7)
  forced = create_model("resnet18", ModelOptions(10, 3, 32, stem="imagenet"), rngs=nnx.Rngs(0))
  assert forced.conv1.kernel_size == (7, 7)


def test_unknown_model_names_the_key():
  with pytest.raises(ConfigError, match="'model.name' is 'vgg'"):
    create_model("vgg", ModelOptions(10), rngs=nnx.Rngs(0))


def test_torch_twin_trains():
  twin = make_torch_model("small_cnn", 10, 1, 28)
  loss = torch.nn.functional.cross_entropy(twin(torch.randn(4, 1, 28, 28)), torch.arange(4))
  loss.backward()
  assert all(p.grad is not None for p in twin.parameters())


def _parameter_paths(model: nnx.Module) -> list[str]:
  return [".".join(map(str, path)) for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))]


def _smallest_of_each_family() -> list[str]:
  """Every family vision registers (one builder function), by its first, smallest, variant.

  Test-only registrations (tests/unconvertible_models.py, imported by another test file
  that may be collected first) are not families of the library.
  """
  first = {}
  for name, builder in MODELS.items():
    if builder.__module__.startswith("vision."):
      first.setdefault((builder.__module__, builder.__qualname__), name)
  return sorted(first.values())


@pytest.mark.parametrize("name", _smallest_of_each_family())
def test_every_model_has_head_features_and_layer_groups(name):
  # The contract of vision.models that transfer learning relies on; with a multi-task
  # objective's learned weights, which must sit in the head's layer group.
  model = create_model(name, ModelOptions(num_classes=5, in_channels=3, image_size=32,
                                          uncertainty_weights=2), rngs=nnx.Rngs(0))
  assert model.head.log_variance[...].shape == (2,)
  model.eval()
  images = jnp.ones((2, 32, 32, 3))
  # One compiled call: op-by-op eager dispatch of a whole network costs ~6x the compile.
  features, logits = nnx.jit(lambda m, x: (m.features(x), m(x)))(model, images)
  assert features.ndim == 2 and features.shape[1] == model.head.in_features
  assert jnp.allclose(model.head(features), logits, atol=1e-5)
  groups = model.layer_groups()
  assert groups[-1] == ("head",)
  for path in _parameter_paths(model):
    owners = [prefix for group in groups for prefix in group
              if path == prefix or path.startswith(prefix + ".")]
    assert len(owners) == 1, (path, owners)


@pytest.mark.slow
# The families test_train.py does not train (small_cnn, resnet); mobilenet_v2's block
# is also EfficientNet's and MobileNetV3's.
@pytest.mark.parametrize("name", ["mobilenet_v2", "vit_ti16", "convnext_tiny"])
def test_every_family_trains_under_the_data_mesh(name):
  # The train step shards the batch over the mesh's explicit 'data' axis: every op
  # of every family must accept that (ViT's class token once did not).
  model = create_model(name, ModelOptions(num_classes=5, in_channels=3, image_size=32),
                       rngs=nnx.Rngs(0))
  def floats(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]

  before = floats(nnx.state(model))
  optimizer = nnx.Optimizer(model, optax.sgd(0.01), wrt=nnx.Param)
  mesh = parallel.make_mesh()
  steps = Steps.create(model, optimizer, mesh)
  rng = np.random.default_rng(0)
  batch = parallel.to_global({"image": rng.standard_normal((4, 32, 32, 3), np.float32),
                              "label": np.arange(4, dtype=np.int32)}, mesh)
  state, metrics = steps.train(steps.state, batch, jax.random.key(0))
  assert int(metrics["nonfinite"]) == 0 and np.isfinite(float(metrics["train/loss"]))
  after = floats(state.model)
  assert len(after) == len(before)
  assert sum(not np.array_equal(a, b) for a, b in zip(before, after)) > len(before) // 2
  probs = steps.predict(state, batch)
  assert probs.shape == (4, 5) and np.allclose(np.asarray(probs).sum(-1), 1, atol=1e-5)
