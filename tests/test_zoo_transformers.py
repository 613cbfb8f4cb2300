"""ViT and ConvNeXt: PyTorch weights imported into the NNX models give PyTorch's logits.

Every PyTorch reference (timm or torchvision, eval mode, no downloads) has all
its tensors randomised — LayerNorm scales and biases, layer scales, class
token and position embedding included — so that a tensor copied to the wrong
place cannot go unnoticed; then the imported NNX model must give the same
logits (max abs difference ≤ 1e-4, fp32). Inputs are small (32–64 px, with the
references built for that size) to keep the big models cheap on CPU; the
forward passes run op by op, which on CPU is faster than compiling them once.
"""

from __future__ import annotations

import os
import re
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from flax import nnx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import safetensors.numpy  # noqa: E402
import timm  # noqa: E402
from timm.layers import resample_abs_pos_embed  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

from vision.config import ConfigError  # noqa: E402
from vision.models import ModelOptions, create_model  # noqa: E402
from vision.models.torch_import import WeightImportError, import_torch_state  # noqa: E402
from vision.models.vit import resize_pos_embed  # noqa: E402

NUM_CLASSES = 10
TOLERANCE = 1e-4


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
  """Every float tensor random, at a scale that keeps activations near 1."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, tensor in module.state_dict().items():
      if not tensor.is_floating_point():
        continue
      if any(key in name for key in ("pos_emb", "cls_token", "class_token")):
        tensor.normal_(0.0, 0.5, generator=generator)
      elif any(key in name for key in ("gamma", "layer_scale")) or (
          tensor.ndim == 1 and name.endswith("weight")):  # norm scales, layer scales
        tensor.normal_(1.0, 0.2, generator=generator)
      elif tensor.ndim == 1:  # biases
        tensor.normal_(0.0, 0.1, generator=generator)
      else:
        bound = (3 / tensor[0].numel())**0.5  # std 1/sqrt(fan_in); uniform is cheaper to draw
        tensor.uniform_(-bound, bound, generator=generator)
  return module.eval()


def random_reference(factory: Callable[[int], torch.nn.Module], size: int) -> torch.nn.Module:
  """The reference built on the meta device (skipping its own init), then randomised."""
  with torch.device("meta"):
    reference = factory(size)
  return randomize(reference.to_empty(device="cpu"))


def state_dict_numpy(module: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def timm_vit(name: str, image_size: int, **kwargs) -> torch.nn.Module:
  return timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, img_size=image_size,
                           **kwargs)


def torchvision_vit(name: str, image_size: int) -> torch.nn.Module:
  return getattr(torchvision.models, name)(weights=None, num_classes=NUM_CLASSES,
                                           image_size=image_size)


def timm_convnext(name: str, image_size: int) -> torch.nn.Module:
  del image_size
  return timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES)


def torchvision_convnext(name: str, image_size: int) -> torch.nn.Module:
  del image_size
  return getattr(torchvision.models, name)(weights=None, num_classes=NUM_CLASSES)


# (our name, source, reference factory, reference name, input size)
_TIMM_VITS = [
    ("vit_ti16", lambda s: timm_vit("vit_tiny_patch16_224", s), 32),
    ("vit_ti32", lambda s: timm_vit("vit_tiny_patch16_224", s, patch_size=32), 64),
    ("vit_s16", lambda s: timm_vit("vit_small_patch16_224", s), 32),
    ("vit_s32", lambda s: timm_vit("vit_small_patch32_224", s), 64),
    ("vit_b16", lambda s: timm_vit("vit_base_patch16_224", s), 32),
    ("vit_b32", lambda s: timm_vit("vit_base_patch32_224", s), 64),
    ("vit_l16", lambda s: timm_vit("vit_large_patch16_224", s), 32),
    ("vit_l32", lambda s: timm_vit("vit_large_patch32_224", s), 64),
]
# torchvision's naming is one mapping per family: checked on B/16, B/32, L/32, ConvNeXt-T and -B.
_TORCHVISION_VITS = [
    ("vit_b16", lambda s: torchvision_vit("vit_b_16", s), 32),
    ("vit_b32", lambda s: torchvision_vit("vit_b_32", s), 64),
    ("vit_l32", lambda s: torchvision_vit("vit_l_32", s), 64),
]
_CONVNEXTS = ["convnext_tiny", "convnext_small", "convnext_base"]
_TORCHVISION_CONVNEXTS = ["convnext_tiny", "convnext_base"]
_HEAVY = ("vit_l", "convnext_base", "convnext_small")


def _case(name, source, factory, size):
  marks = [pytest.mark.slow] if name.startswith(_HEAVY) else []
  return pytest.param(name, source, factory, size, id=f"{name}-{source}", marks=marks)


CASES = ([_case(n, "timm", f, s) for n, f, s in _TIMM_VITS] +
         [_case(n, "torchvision", f, s) for n, f, s in _TORCHVISION_VITS] +
         [_case(n, "timm", lambda s, n=n: timm_convnext(n, s), 32) for n in _CONVNEXTS] +
         [_case(n, "torchvision", lambda s, n=n: torchvision_convnext(n, s), 32)
          for n in _TORCHVISION_CONVNEXTS])


def _images(size: int, seed: int = 1) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=(2, size, size, 3)).astype(np.float32)


def _torch_logits(reference: torch.nn.Module, images: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return reference(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()


def _imported(name: str, state_dict, source: str, size: int) -> nnx.Module:
  """The NNX model with the state dict imported.

  Built abstractly (`nnx.eval_shape`): the import sets every parameter, and a
  parameter it missed would make the forward pass fail.
  """
  model = nnx.eval_shape(lambda: create_model(
      name, ModelOptions(num_classes=NUM_CLASSES, image_size=size), rngs=nnx.Rngs(0)))
  import_torch_state(model, name, state_dict, source)
  model.eval()
  return model


def _concrete_rng_state(model: nnx.Module) -> None:
  """Real (unused in eval mode) RNG state in an abstract model, so it can be jitted whole."""
  def fill(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.key(0)
    return jnp.zeros(x.shape, x.dtype)
  nnx.update(model, jax.tree.map(fill, nnx.state(model, nnx.RngState)))


@jax.jit
def _apply(graph_and_state, images):
  return nnx.merge(*graph_and_state)(images)


def _forward(model: nnx.Module, images: np.ndarray) -> np.ndarray:
  """Logits, compiled once per architecture: on CPU faster than op by op (ConvNeXt-T 1.9 s vs
  5.3 s, ViT-L 2.0 vs 2.7), and the timm and torchvision cases of one architecture share it."""
  _concrete_rng_state(model)
  return np.asarray(_apply(nnx.split(model), jnp.asarray(images)))


@pytest.mark.parametrize("name, source, factory, size", CASES)
def test_imported_logits_match_pytorch(name, source, factory, size):
  reference = random_reference(factory, size)
  images = _images(size)
  expected = _torch_logits(reference, images)
  state_dict = state_dict_numpy(reference)
  del reference
  model = _imported(name, state_dict, source, size)
  logits = _forward(model, images)
  difference = np.abs(logits - expected).max()
  print(f"parity {name} {source} {size}px: max |Δlogit| = {difference:.2e}")
  assert np.abs(expected).max() > 0.1  # the comparison is not between near-zero numbers
  assert difference <= TOLERANCE


def test_position_embedding_is_resized_on_import_like_timm():
  # Weights made for 224 px (a 14×14 grid) imported into a ViT built for 64 px (4×4).
  source = random_reference(lambda s: timm_vit("vit_tiny_patch16_224", s), 224)
  state_dict = state_dict_numpy(source)
  model = _imported("vit_ti16", state_dict, "timm", 64)
  expected = resample_abs_pos_embed(torch.from_numpy(state_dict["pos_embed"]), (4, 4),
                                    num_prefix_tokens=1).numpy()
  assert model.pos_embed.shape == (1, 17, 192)
  np.testing.assert_allclose(np.asarray(model.pos_embed[...]), expected, atol=1e-5)
  # End to end: timm's own 64 px model loading the same checkpoint (timm resizes on load too).
  reference = timm_vit("vit_tiny_patch16_224", 64).eval()
  reference.load_state_dict(timm.models.vision_transformer.checkpoint_filter_fn(
      {k: torch.from_numpy(v) for k, v in state_dict.items()}, reference))
  images = _images(64)
  assert np.abs(_forward(model, images) - _torch_logits(reference, images)).max() <= TOLERANCE


@pytest.mark.parametrize("grid", [(4, 4), (20, 20), (3, 5)])
def test_resize_pos_embed_equals_timm_resample(grid):
  pos_embed = np.random.default_rng(0).normal(size=(1, 1 + 14 * 14, 8)).astype(np.float32)
  expected = resample_abs_pos_embed(torch.from_numpy(pos_embed), grid, num_prefix_tokens=1)
  np.testing.assert_allclose(np.asarray(resize_pos_embed(pos_embed, grid)), expected.numpy(),
                             atol=1e-5)


def test_attention_maps_are_timms_attention_weights():
  reference = random_reference(lambda s: timm_vit("vit_tiny_patch16_224", s), 32)
  captured = []
  for block in reference.blocks:
    block.attn.fused_attn = False  # timm then computes the softmax weights explicitly
    block.attn.attn_drop.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0]))
  images = _images(32)
  _torch_logits(reference, images)
  model = _imported("vit_ti16", state_dict_numpy(reference), "timm", 32)
  maps = np.asarray(model.attention_maps(jnp.asarray(images)))
  assert maps.shape == (12, 2, 3, 5, 5)  # depth, batch, heads, 1 + 2×2 tokens (queries, keys)
  np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(maps, np.stack([t.numpy() for t in captured]), atol=1e-5)


def test_stochastic_depth_and_dropout_in_training():
  options = ModelOptions(num_classes=3, image_size=32, dropout=0.1, drop_path=0.5)
  model = nnx.eval_shape(lambda: create_model("vit_ti16", options, rngs=nnx.Rngs(0)))
  assert model.pos_drop.rate == 0.1 and model.head_drop.rate == 0.1
  assert [b.drop_path.rate for b in model.blocks] == pytest.approx(np.linspace(0, 0.5, 12))
  convnext = nnx.eval_shape(lambda: create_model("convnext_tiny", options, rngs=nnx.Rngs(0)))
  rates = [b.drop_path.rate for stage in convnext.stages for b in stage.blocks]
  assert rates == pytest.approx(np.linspace(0, 0.5, 18)) and convnext.head_drop.rate == 0.1
  # Random parameters drawn by NumPy (no per-shape initialiser compiles), then train mode.
  rng = np.random.default_rng(0)
  nnx.update(model, jax.tree.map(lambda x: (0.05 * rng.normal(size=x.shape)).astype(x.dtype),
                                 nnx.state(model, nnx.Param)))
  _concrete_rng_state(model)
  model.train()
  forward = nnx.jit(lambda model, images: model(images))
  images = jnp.asarray(_images(32))
  first, second = forward(model, images), forward(model, images)
  assert not np.allclose(first, second)  # fresh masks each step (eval mode: the parity tests)


def test_wrong_checkpoint_and_sizes_fail_with_clear_errors():
  state_dict = state_dict_numpy(
      random_reference(lambda s: timm_vit("vit_tiny_patch16_224", s), 32))
  with pytest.raises(WeightImportError, match="has shape"):
    _imported("vit_s16", state_dict, "timm", 32)  # wrong width
  with pytest.raises(WeightImportError, match=re.escape("--source=timm|torchvision|hf, not 'keras'")):
    _imported("vit_ti16", state_dict, "keras", 32)
  with pytest.raises(WeightImportError, match="no tensor 'blocks.0.norm1.weight'"):
    _imported("vit_ti16", {k: v for k, v in state_dict.items() if "norm1" not in k}, "timm", 32)
  with pytest.raises(WeightImportError, match="do not fit the model"):
    _imported("vit_ti16", {**state_dict, "extra.weight": np.zeros(3)}, "timm", 32)
  with pytest.raises(ConfigError, match="multiple of 16, got 40"):
    create_model("vit_ti16", ModelOptions(num_classes=3, image_size=40), rngs=nnx.Rngs(0))
  with pytest.raises(ConfigError, match="at least 32 px, got 28"):
    create_model("convnext_tiny", ModelOptions(num_classes=3, image_size=28), rngs=nnx.Rngs(0))
  model = _imported("vit_ti16", state_dict, "timm", 32)
  with pytest.raises(ValueError, match="built for 32×32 images, got 64×64"):
    model(jnp.zeros((1, 64, 64, 3)))


def test_hugging_face_checkpoint_file(tmp_path):
  # A ViT-Ti saved by transformers (`save_pretrained`: the naming checkpoints on the Hub have).
  import transformers  # pylint: disable=import-outside-toplevel  (slow to import: only here)
  config = transformers.ViTConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
                                  intermediate_size=768, image_size=32, patch_size=16,
                                  num_labels=NUM_CLASSES)
  reference = randomize(transformers.ViTForImageClassification(config))
  reference.save_pretrained(tmp_path)
  state_dict = safetensors.numpy.load_file(tmp_path / "model.safetensors")
  assert "vit.encoder.layer.0.attention.attention.query.weight" in state_dict
  images = _images(32)
  with torch.no_grad():
    expected = reference(torch.from_numpy(images).permute(0, 3, 1, 2)).logits.numpy()
  model = _imported("vit_ti16", state_dict, "hf", 32)
  difference = np.abs(_forward(model, images) - expected).max()
  print(f"parity vit_ti16 hf 32px: max |Δlogit| = {difference:.2e}")
  assert difference <= TOLERANCE
