"""Pruning and quantization-aware training: schedules, masks, surgery and export.

Exact resume with masks (kill -9) is proved by
tests/test_train.py::test_sigkill_and_rerun_ends_bit_identical, whose run prunes.
"""

from __future__ import annotations

import pathlib

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import onnx
from onnx import numpy_helper
import optax
import pytest

from conftest import REPO, tiny_config, write_idx_dataset
from vision import config as config_lib
from vision.checkpoint import ModelCard, load_model
from vision.compress import channels, prune, quant
from vision.compress import report as compress_report
from vision.config import ConfigError
from vision.models import ModelOptions, create_model
from vision.train import loop

OPTIONS = ModelOptions(num_classes=4, in_channels=1, image_size=16, widths=(8, 16), hidden=32)


def _model(seed: int = 0) -> nnx.Module:
  return create_model("small_cnn", OPTIONS, rngs=nnx.Rngs(seed))


def _prune_config(**overrides) -> ml_collections.ConfigDict:
  config = config_lib.defaults().prune
  config.update(overrides)
  return config


@nnx.jit
def _step(model, optimizer, images):
  optimizer.update(model, nnx.grad(lambda m: jnp.mean(m(images) ** 2))(model))


def _train_steps(model, tx, steps: int, seed: int = 0) -> nnx.Optimizer:
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  return _continue(model, optimizer, steps, seed)


# ------------------------------------------------------------------ schedule and masks

def test_the_schedule_is_zhu_and_gupta_cubic_ramp():
  spec = prune.PruneSpec(0.8, "unstructured", "global", 10, 110, 10, ())
  values = [float(spec.sparsity_at(jnp.asarray(t))) for t in (0, 10, 60, 110, 500)]
  np.testing.assert_allclose(values, [0, 0, 0.8 * (1 - 0.5 ** 3), 0.8, 0.8], rtol=1e-6)
  updates = [t for t in range(200) if spec.is_update_step(jnp.asarray(t))]
  assert updates == list(range(10, 111, 10))


def test_keep_mask_prunes_exactly_the_lowest_fraction():
  scores = jnp.asarray([5.0, 0.0, 3.0, 0.0, 1.0, 4.0, 2.0, 6.0])
  keep = prune.keep_mask(scores, jnp.asarray(0.5))
  assert keep.tolist() == [True, False, True, False, False, True, False, True]


def test_unstructured_masks_reach_the_target_then_stay_fixed():
  model = _model()
  spec = prune.spec_from_config(_prune_config(sparsity=0.75, start=0.0, end=0.5, update_every=2),
                                model, total_steps=20, model_name="small_cnn")
  assert spec.prunable == ("hidden.kernel", "stages.1.conv.kernel")  # not the first conv, head
  optimizer = _train_steps(model, optax.chain(optax.sgd(0.05), prune.masked(spec)), 11)
  params = nnx.state(model, nnx.Param)
  assert prune.sparsity_of(params, spec.prunable) == pytest.approx(0.75, abs=1e-3)
  assert prune.sparsity_of(params, ("stages.0.conv.kernel", "head.kernel")) == 0
  masks_at_end = _masks(optimizer)
  zeros_at_end = {n: np.asarray(v) == 0 for n, v in _named(params).items() if n in spec.prunable}
  _continue(model, optimizer, 9)  # past `end`: fine-tuning with fixed masks
  for name, was_zero in zeros_at_end.items():
    assert np.all(np.asarray(_named(nnx.state(model, nnx.Param))[name])[was_zero] == 0), name
  for before, after in zip(masks_at_end, _masks(optimizer)):
    np.testing.assert_array_equal(before, after)


def _masks(optimizer) -> list[np.ndarray]:
  return [np.asarray(x) for x in jax.tree.leaves(nnx.state(optimizer)) if x.dtype == bool]


def _named(state) -> dict:
  return {prune.param_name(p): v for p, v in jax.tree_util.tree_flatten_with_path(state)[0]}


def _continue(model, optimizer, steps: int, seed: int = 1) -> nnx.Optimizer:
  images = jax.random.normal(jax.random.key(seed), (8, 16, 16, 1))
  for _ in range(steps):
    _step(model, optimizer, images)
  return optimizer


def test_layer_scope_prunes_every_layer_to_the_target():
  model = _model()
  spec = prune.spec_from_config(_prune_config(sparsity=0.5, scope="layer", start=0, end=0),
                                model, total_steps=4, model_name="small_cnn")
  _train_steps(model, optax.chain(optax.sgd(0.05), prune.masked(spec)), 2)
  params = nnx.state(model, nnx.Param)
  for name in spec.prunable:
    assert prune.sparsity_of(params, (name,)) == pytest.approx(0.5, abs=1e-3), name


def test_channel_pruning_then_surgery_gives_the_same_logits_with_fewer_flops():
  model = _model()
  config = _prune_config(sparsity=0.5, granularity="channel", start=0, end=0, exclude=(r"^head\.",))
  spec = prune.spec_from_config(config, model, total_steps=4, model_name="small_cnn")
  _train_steps(model, optax.chain(optax.sgd(0.05), prune.masked(spec)), 3)
  kept = [len(k) for k in channels.live_channels(model)]
  assert sum(kept) == 12 and min(kept) >= 1  # half of 8 + 16 channels, ranked globally
  card = _card()
  narrow, narrow_card = channels.narrow_copy(model, card)
  assert narrow_card.model_options["widths"] == tuple(kept)
  model.eval()
  images = jax.random.normal(jax.random.key(2), (4, 16, 16, 1))
  np.testing.assert_allclose(narrow(images), model(images), atol=1e-5)
  assert channels.forward_flops(narrow, (16, 16, 1)) < 0.7 * channels.forward_flops(model, (16, 16, 1))


def _card():
  return ModelCard(arch="small_cnn", num_classes=4, class_names=("a", "b", "c", "d"),
                   image_size=16, channels=1, mean=(0.5,), std=(0.5,),
                   model_options={"widths": (8, 16), "hidden": 32, "dropout": 0.0,
                                  "dtype": "float32", "drop_path": 0.0, "stem": "auto"})


@pytest.mark.parametrize("key, value, message", [
    ("prune.sparsity", 1.0, "'prune.sparsity' must be in [0, 1)"),
    ("prune.granularity", "filter", "'prune.granularity' is 'filter'"),
    ("quant.mode", "int8", "'quant.mode' is 'int8'"),
    ("quant.weight_bits", 3, "'quant.weight_bits' must be 4 or 8"),
])
def test_bad_compression_keys_get_one_line(key, value, message):
  config = config_lib.defaults()
  group, name = key.split(".")
  config[group][name] = value
  with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
    config_lib.validate(config, check_environment=False)


def test_channel_pruning_of_a_family_surgery_cannot_rebuild_is_refused():
  model = create_model("resnet18", ModelOptions(num_classes=4, in_channels=1, image_size=16),
                       rngs=nnx.Rngs(0))
  with pytest.raises(ConfigError, match="small_cnn"):
    prune.spec_from_config(_prune_config(sparsity=0.5, granularity="channel"), model,
                           total_steps=10, model_name="resnet18")


# ------------------------------------------------------------------ QAT

def test_qat_ranges_learn_in_training_and_freeze_in_eval():
  model = quant.quantize(_model(), mode="qat", input_shape=(16, 16, 1))
  images = jax.random.normal(jax.random.key(0), (8, 16, 16, 1))
  forward = nnx.jit(lambda module, x: module(x))  # eager, each fake-quant op compiles alone
  forward(model, images)
  learned = quant.activation_ranges(model)
  assert len(learned) == 4  # both convolutions, the hidden layer and the head
  model.eval()
  frozen = forward(model, images * 10)
  assert [r for _, r in quant.activation_ranges(model)] == [r for _, r in learned]
  float_logits = forward(quant.float_model(model), images * 10)
  assert not np.allclose(frozen, float_logits), "QAT forward does not quantize"


# ------------------------------------------------------------------ end to end

@pytest.fixture(scope="module")
def pruned_qat_dir(tmp_path_factory) -> pathlib.Path:
  """A tiny model trained 12 steps with 75% unstructured pruning and int8 QAT (in process)."""
  root = tmp_path_factory.mktemp("compress")
  data = write_idx_dataset(root / "idx")
  config = tiny_config(f"idx:{data}", steps=12)
  config.data.class_names = ("a", "b", "c", "d")
  config.wandb.mode = "disabled"
  config.prune.update(sparsity=0.75, start=0.0, end=0.5, update_every=2)
  config.quant.mode = "qat"
  config.model.dropout = 0.1  # dropout's rescaling is a training-only quantized op
  loop.train(config, root / "run")
  return root / "run"


@pytest.mark.slow
def test_pruned_qat_model_exports_its_zeros_and_int8_side_by_side(tmp_path, pruned_qat_dir):
  """`benchmark_export --variant` rows: fp32 keeps the target zeros, int8 uses the QAT ranges."""
  model, card = load_model(pruned_qat_dir)
  assert card.quantization == {"mode": "qat", "weight_bits": 8, "activation_bits": 8}
  rows = compress_report.compare_variants(
      [("fp32 pruned", str(pruned_qat_dir), False), ("QAT int8", str(pruned_qat_dir), True)],
      tmp_path, repeats=4, max_examples=64, batch_size=4)
  fp32, int8 = rows
  assert fp32["int8_ranges"] is None and fp32["top1_agreement"] >= 0.99
  assert int8["int8_ranges"] == "qat"
  assert int8["top1_agreement"] >= 0.99  # against the QAT model's simulated-int8 forward
  assert int8["size_bytes"] < fp32["size_bytes"] / 2
  assert fp32["speedup_vs_first"] == fp32["speedup_vs_first_batched"] == 1.0
  assert fp32["parameters"] == int8["parameters"] > 0  # the float network's, either way
  assert all(row["latency_ms_per_image_batched"] > 0 and 0 <= row["test_accuracy"] <= 1
             for row in rows)
  table = compress_report.format_variants_table(rows)
  assert "batch 4" in table and len(table.splitlines()) == 4  # header, rule, two variants

  prunable = {tuple(np.asarray(v).shape): n for n, v in _named(nnx.state(model, nnx.Param)).items()
              if n in ("stages.1.conv.kernel", "hidden.kernel")}
  zeros = total = 0
  for tensor in onnx.load(str(tmp_path / "v0" / "model.onnx")).graph.initializer:
    weight = numpy_helper.to_array(tensor)
    as_jax = {4: lambda w: w.transpose(2, 3, 1, 0), 2: lambda w: w}.get(weight.ndim)
    if as_jax is None:
      continue
    for candidate in (as_jax(weight), weight.T):
      if candidate.shape in prunable:
        zeros, total = zeros + int(np.sum(candidate == 0)), total + candidate.size
        break
  assert total == sum(np.prod(shape) for shape in prunable)
  assert zeros / total >= 0.75 - 1 / total
  quantized = onnx.load(str(tmp_path / "v1" / "model.onnx"))
  assert sum(node.op_type == "QuantizeLinear" for node in quantized.graph.node) >= 4


@pytest.mark.slow
def test_the_compress_config_smoke_prunes_then_fine_tunes_with_qat(tmp_path):
  """configs/compress_fashion_mnist.py as its docstring runs it: prune to 75%, then QAT from it."""
  path = REPO / "configs/compress_fashion_mnist.py"
  pruned, qat = tmp_path / "prune75", tmp_path / "qat_prune75"
  for workdir, arg in ((pruned, "smoke,sparsity=0.75"),
                       (qat, f"smoke,qat,sparsity=0.75,init={pruned}")):
    config = config_lib.from_file(path, arg)
    config.wandb.mode = "disabled"
    config.train.epochs = 0.5  # the docstring's smoke is 2 epochs of 2,048 images
    loop.train(config, workdir)
  prunable = ("stages.1.conv.kernel", "stages.2.conv.kernel", "hidden.kernel")
  for workdir in (pruned, qat):
    model, card = load_model(workdir)
    params = nnx.state(quant.float_model(model), nnx.Param)
    assert prune.sparsity_of(params, prunable) >= 0.75 - 1e-3, workdir.name
  assert card.quantization["mode"] == "qat"
  zeros = [np.asarray(v) == 0 for v in jax.tree.leaves(
      nnx.state(quant.float_model(load_model(pruned)[0]), nnx.Param))]
  still = [np.asarray(v) == 0 for v in jax.tree.leaves(params)]
  assert all(np.all(b[a]) for a, b in zip(zeros, still))  # QAT kept the pruned weights at zero
