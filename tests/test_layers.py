"""layers.Conv: the matmul lowering equals lax.conv, outputs and gradients, for every zoo shape."""

from __future__ import annotations

import dataclasses
import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from vision import parallel
from vision.config import ConfigError
from vision.models import ModelOptions, create_model, layers, normalization

# (name, height, width, in, out, kernel, stride, padding, groups, dilation)
ZOO_SHAPES = [
    ("3x3 s1 explicit", 8, 8, 5, 7, 3, 1, ((1, 1), (1, 1)), 1, 1),
    ("3x3 s2 SAME odd", 9, 11, 4, 6, 3, 2, "SAME", 1, 1),
    ("1x1 s1", 6, 6, 8, 5, 1, 1, "VALID", 1, 1),
    ("1x1 s2 odd", 7, 9, 6, 4, 1, 2, ((0, 0), (0, 0)), 1, 1),
    ("7x7 s2 ResNet stem", 15, 15, 3, 8, 7, 2, ((3, 3), (3, 3)), 1, 1),
    ("depthwise 3x3 s1", 8, 8, 6, 6, 3, 1, "SAME", 6, 1),
    ("depthwise 3x3 s2 odd", 9, 9, 6, 6, 3, 2, ((1, 1), (1, 1)), 6, 1),
    ("depthwise 5x5 s1", 9, 9, 4, 4, 5, 1, "SAME", 4, 1),
    ("depthwise 5x5 s2", 10, 10, 4, 4, 5, 2, "SAME", 4, 1),
    ("depthwise 7x7 ConvNeXt", 9, 9, 4, 4, 7, 1, ((3, 3), (3, 3)), 4, 1),
    ("depthwise multiplier 2", 8, 8, 3, 6, 3, 1, "SAME", 3, 1),
    ("4x4 s4 patchify", 16, 16, 3, 8, 4, 4, "VALID", 1, 1),
    ("16x16 s16 patchify, ragged", 34, 32, 3, 8, 16, 16, "VALID", 1, 1),
    ("grouped 3x3", 8, 8, 8, 6, 3, 1, "SAME", 2, 1),
    ("asymmetric explicit padding", 7, 8, 3, 4, 3, 1, ((0, 2), (1, 0)), 1, 1),
    ("VALID 3x3 s2 odd", 11, 9, 3, 4, 3, 2, "VALID", 1, 1),
    ("dilated 3x3", 10, 10, 3, 4, 3, 1, "SAME", 1, 2),
]


def _conv(impl, inputs, outputs, kernel, stride, padding, groups, dilation):
  return layers.Conv(inputs, outputs, (kernel, kernel), (stride, stride), padding=padding,
                     feature_group_count=groups, kernel_dilation=dilation,
                     precision="highest", conv_impl=impl, rngs=nnx.Rngs(0))


def _output_and_grads(graphdef, params, x):
  """The output and the gradients of a fixed, position-dependent weighting of it."""

  def loss(params, x):
    y = nnx.merge(graphdef, params)(x)
    return (y * jnp.sin(jnp.arange(y.size, dtype=y.dtype).reshape(y.shape))).sum(), y

  (_, y), (grads, dx) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)
  return y, dx, grads["kernel"][...], grads["bias"][...]


def _assert_close(actual, expected, what):
  scale = float(jnp.abs(expected).max())
  error = float(jnp.abs(actual - expected).max())
  assert error <= 1e-5 * scale, f"{what}: max error {error:.3g} vs scale {scale:.3g}"


@pytest.mark.parametrize("case", ZOO_SHAPES, ids=[c[0] for c in ZOO_SHAPES])
def test_matmul_conv_equals_lax_conv_with_gradients(case):
  _, height, width, inputs, outputs, kernel, stride, padding, groups, dilation = case
  # Sharded as in the train step: batch over the mesh (explicit sharding types), parameters
  # replicated.
  mesh = parallel.make_mesh()
  x = parallel.to_global(
      {"x": np.random.default_rng(1).standard_normal((2, height, width, inputs), np.float32)},
      mesh)["x"]
  splits = []
  for impl in ("lax", "matmul"):
    conv = _conv(impl, inputs, outputs, kernel, stride, padding, groups, dilation)
    conv.bias[...] = jnp.linspace(-1, 1, outputs)
    graphdef, params = nnx.split(conv)
    splits.append((graphdef, parallel.replicate(params, mesh)))
  # Both lowerings in one compiled program: one compile per case keeps the test fast.
  want, got = jax.jit(lambda x, params: [
      _output_and_grads(graphdef, p, x) for (graphdef, _), p in zip(splits, params)])(
          x, [params for _, params in splits])
  for what, got_one, want_one in zip(("output", "d input", "d kernel", "d bias"), got, want):
    assert got_one.shape == want_one.shape, what
    _assert_close(got_one, want_one, what)


def test_same_signature_and_parameters_as_nnx_conv():
  ours = layers.Conv(4, 8, (3, 3), 2, padding="SAME", feature_group_count=2, use_bias=True,
                     dtype=jnp.float32, param_dtype=jnp.float32,
                     kernel_init=nnx.initializers.ones, bias_init=nnx.initializers.zeros,
                     rngs=nnx.Rngs(0))
  theirs = nnx.Conv(4, 8, (3, 3), 2, padding="SAME", feature_group_count=2, use_bias=True,
                    kernel_init=nnx.initializers.ones, rngs=nnx.Rngs(0))
  assert isinstance(ours, nnx.Conv)
  ours_state, theirs_state = nnx.state(ours, nnx.Param), nnx.state(theirs, nnx.Param)
  assert jax.tree.map(jnp.shape, ours_state) == jax.tree.map(jnp.shape, theirs_state)
  assert ours.kernel.shape == (3, 3, 2, 8)


def test_auto_follows_the_backend_and_unknown_impl_is_a_config_error():
  on_cpu = jax.default_backend() == "cpu"
  assert layers.resolve_conv_impl("auto", depthwise=True) == ("matmul" if on_cpu else "lax")
  assert layers.resolve_conv_impl("auto") == "lax"
  assert layers.resolve_conv_impl("lax", depthwise=True) == "lax"
  assert layers.resolve_conv_impl("matmul") == "matmul"
  with pytest.raises(ConfigError, match="'model.conv_impl' is 'fast'"):
    create_model("small_cnn", ModelOptions(10, 1, 28, conv_impl="fast"), rngs=nnx.Rngs(0))


def test_a_checkpoint_moves_between_implementations(tmp_path):
  options = ModelOptions(num_classes=5, in_channels=3, image_size=8, widths=(4, 8), hidden=8)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 3)), jnp.float32)
  trained = create_model("small_cnn", dataclasses.replace(options, conv_impl="matmul"),
                         rngs=nnx.Rngs(1))
  assert all(c.conv_impl == "matmul" for _, c in nnx.iter_graph(trained)
             if isinstance(c, layers.Conv))
  trained.eval()
  expected = trained(x)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "ckpt", nnx.state(trained))
  checkpointer.wait_until_finished()
  fresh = create_model("small_cnn", dataclasses.replace(options, conv_impl="lax"),
                       rngs=nnx.Rngs(2))
  fresh.eval()
  nnx.update(fresh, checkpointer.restore(tmp_path / "ckpt", nnx.state(fresh)))
  _assert_close(fresh(x), expected, "logits after moving matmul → lax")
  layers.set_conv_impl(fresh, "matmul")
  _assert_close(fresh(x), expected, "logits after switching back to matmul")


@pytest.mark.parametrize("size, ties", [(8, False), (7, False), (8, True)])
def test_max_pool_equals_nnx_max_pool(size, ties):
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, size, size, 3)), jnp.float32)
  if ties:  # equal maxima in most windows: the gradient goes to the first, as in nnx and PyTorch
    x = jnp.round(x).clip(0)
  weights = jnp.asarray(np.random.default_rng(1).standard_normal((2, size // 2, size // 2, 3)))

  def loss(pool, x):
    return (pool(x, (2, 2), (2, 2)) * weights).sum()

  want = jax.value_and_grad(loss, argnums=1)(nnx.max_pool, x)
  got = jax.value_and_grad(loss, argnums=1)(layers.max_pool, x)
  for got_one, want_one in zip(got, want):
    np.testing.assert_allclose(got_one, want_one, rtol=1e-6)


@pytest.mark.parametrize("strides, groups, dilation", [((1, 1), 1, (1, 1)), ((2, 2), 2, (1, 1)),
                                                       ((1, 1), 1, (2, 2))])
def test_lax_conv_has_jax_own_gradients_from_materialised_inputs(strides, groups, dilation):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 9, 9, 4)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 4 // groups, 6)), jnp.float32)
  conv = functools.partial(jax.lax.conv_general_dilated, window_strides=strides,
                           padding=((1, 1), (1, 1)), rhs_dilation=dilation,
                           dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
  lowering = layers.ConvLowering("lax")
  ours = lambda x, w: lowering(x, w, strides, ((1, 1), (1, 1)), rhs_dilation=dilation,
                               dimension_numbers=layers._NHWC_HWIO,  # pylint: disable=protected-access
                               feature_group_count=groups)
  loss = lambda conv, x, w: (jnp.tanh(conv(jnp.sin(x), w)) ** 2).sum()
  want = jax.grad(functools.partial(loss, conv), argnums=(0, 1))(x, w)
  grad = jax.jit(jax.grad(functools.partial(loss, ours), argnums=(0, 1)))
  for got_one, want_one in zip(grad(x, w), want):
    np.testing.assert_allclose(got_one, want_one, rtol=1e-5, atol=1e-5)
  # The input and the incoming gradient each pass a conditional: fusion boundaries.
  assert grad.lower(x, w).compile().as_text().count("conditional(") == 2


def test_gradient_barrier_is_an_identity_that_ends_backward_fusions():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 5, 6)), jnp.float32)

  def loss(x, barrier):
    for _ in range(3):  # a residual stream, as in a ViT
      x = barrier(x)
      x = x + jnp.tanh(x * 1.5)
    return (x**2).sum()

  identity = lambda x: x
  assert np.array_equal(layers.gradient_barrier(x), x)
  expected = jax.grad(loss)(x, identity)
  grad = jax.jit(jax.grad(loss), static_argnums=1)
  np.testing.assert_allclose(grad(x, layers.gradient_barrier), expected, rtol=1e-6)
  # One conditional per barrier survives compilation: the boundary XLA cannot fuse across.
  hlo = grad.lower(x, layers.gradient_barrier).compile().as_text()
  assert hlo.count("conditional(") == 3
  # A NaN gradient stays non-finite, so the train step's check still catches it.
  nan_grad = jax.grad(lambda x: (layers.gradient_barrier(x) * jnp.nan).sum())(x)
  assert not np.isfinite(np.asarray(nan_grad)).any()


@pytest.mark.parametrize("kind", ["batch", "layer"])
@pytest.mark.parametrize("dtype, shift", [(jnp.float32, 0.0), (jnp.float32, 5.0),
                                          (jnp.bfloat16, 1.0)])
def test_normalization_has_nnx_values_state_and_gradients(kind, dtype, shift):
  ours, theirs = ((normalization.BatchNorm, nnx.BatchNorm) if kind == "batch"
                  else (normalization.LayerNorm, nnx.LayerNorm))
  options = dict(momentum=0.9) if kind == "batch" else dict(epsilon=1e-6, use_fast_variance=False)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((4, 5, 6, 12)) * 3 + shift, dtype)
  weights = jnp.asarray(rng.standard_normal((4, 5, 6, 12)), jnp.float32)
  modules = [cls(12, dtype=dtype, rngs=nnx.Rngs(0), **options) for cls in (ours, theirs)]
  for module in modules:
    module.scale[...] = jnp.linspace(0.5, 2, 12)
    module.bias[...] = jnp.linspace(-1, 1, 12)
  loss = lambda module, x: (jnp.tanh(module(x).astype(jnp.float32)) * weights).sum()
  (value, grads), (want_value, want_grads) = (
      nnx.value_and_grad(loss, argnums=(0, 1))(module, x) for module in modules)
  assert value == want_value  # the same forward pass, bit for bit
  tolerance = 1e-5 if dtype == jnp.float32 else 2e-2
  np.testing.assert_allclose(np.asarray(grads[1], np.float32),
                             np.asarray(want_grads[1], np.float32), atol=tolerance)
  for name in ("scale", "bias"):
    np.testing.assert_allclose(grads[0][name][...], want_grads[0][name][...],
                               rtol=tolerance, atol=tolerance)
  # Same state (checkpoints move between them), running averages updated alike.
  state, want_state = (nnx.to_pure_dict(nnx.state(module)) for module in modules)
  assert jax.tree.structure(state) == jax.tree.structure(want_state)
  for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(want_state)):
    np.testing.assert_array_equal(got, want)
  for module in modules:
    module.eval()
  np.testing.assert_array_equal(modules[0](x), modules[1](x))
