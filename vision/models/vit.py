"""Vision Transformer (Dosovitskiy et al. 2021) in Flax NNX, laid out like timm's.

    model = create_model("vit_s16", ModelOptions(num_classes=10, image_size=64), rngs=nnx.Rngs(0))
    logits = model(images)                    # images: [B, 64, 64, 3]
    maps = model.attention_maps(images)       # [depth, B, heads, 1 + 16, 1 + 16]

Variants `vit_{ti,s,b,l}{16,32}`: Ti/S/B/L widths (192/384/768/1024, 12/12/12/24
blocks, 3/6/12/16 heads) with 16 or 32 px patches, a class token read out
after the final LayerNorm (timm's `vit_*_patch*_224`, torchvision's `vit_*_*`).
`ModelOptions.image_size` sets the patch grid (a multiple of the patch size);
weights made for another size are imported with their position embedding
resized bicubically (`resize_pos_embed`, as timm's `resample_abs_pos_embed`).
`ModelOptions.dropout` is timm's `drop_rate` (after the embeddings, the
attention projection, the MLP layers, and before the head);
`ModelOptions.drop_path` the stochastic-depth rate of the last block, rising
linearly from 0 at the first.
"""

from __future__ import annotations

import re

from flax import nnx
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from vision.errors import ConfigError
from vision.models import MODELS, ModelOptions
from vision.models.layers import Conv, gradient_barrier
from vision.models import torch_import
from vision.models.torch_import import StateDict, TorchState, WeightImportError, assign

_init = nnx.initializers.truncated_normal(stddev=0.02)
# name: (width, depth, heads)
_SIZES = {"ti": (192, 12, 3), "s": (384, 12, 6), "b": (768, 12, 12), "l": (1024, 24, 16)}


def layer_norm(features: int, *, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
  # Two-pass variance, as PyTorch computes it (the one-pass form loses digits on large means).
  return nnx.LayerNorm(features, epsilon=1e-6, use_fast_variance=False, dtype=dtype, rngs=rngs)


def linear(in_features: int, out_features: int, *, dtype, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(in_features, out_features, kernel_init=_init, dtype=dtype, rngs=rngs)


def drop_path(rate: float, *, rngs: nnx.Rngs) -> nnx.Dropout:
  """Stochastic depth on [B, N, D] tokens: drops a residual branch per example."""
  return nnx.Dropout(rate, broadcast_dims=(1, 2), rngs=rngs)


class PatchEmbed(nnx.Module):
  """Non-overlapping patches, each projected to a token: [B, H, W, C] → [B, N, D]."""

  def __init__(self, in_channels: int, dim: int, patch: int, *, dtype, rngs: nnx.Rngs):
    self.proj = Conv(in_channels, dim, (patch, patch), (patch, patch), padding="VALID",
                     dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.proj(x)
    return x.reshape(x.shape[0], -1, x.shape[-1])


class Attention(nnx.Module):
  """Multi-head self-attention that also returns its weights [B, heads, N, N]."""

  def __init__(self, dim: int, num_heads: int, *, dropout: float, dtype, rngs: nnx.Rngs):
    self.num_heads = num_heads
    self.qkv = linear(dim, 3 * dim, dtype=dtype, rngs=rngs)
    self.proj = linear(dim, dim, dtype=dtype, rngs=rngs)
    self.proj_drop = nnx.Dropout(dropout, rngs=rngs)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    batch, tokens, dim = x.shape
    head_dim = dim // self.num_heads
    qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, head_dim)
    # lax, not qkv[:, :, i]: NumPy indexing under a symbolic batch (export) becomes a gather
    # that TFLite cannot convert; with a concrete batch both are the same slice.
    q, k, v = (lax.index_in_dim(qkv, i, axis=2, keepdims=False) for i in range(3))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q * head_dim**-0.5, k)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
    out = self.proj_drop(self.proj(out.reshape(batch, tokens, dim)))
    return out, weights


class Mlp(nnx.Module):

  def __init__(self, dim: int, hidden: int, *, dropout: float, dtype, rngs: nnx.Rngs):
    self.fc1 = linear(dim, hidden, dtype=dtype, rngs=rngs)
    self.fc2 = linear(hidden, dim, dtype=dtype, rngs=rngs)
    self.drop = nnx.Dropout(dropout, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    # Exact (erf) GELU, as PyTorch's nn.GELU().
    return self.drop(self.fc2(self.drop(jax.nn.gelu(self.fc1(x), approximate=False))))


class Block(nnx.Module):
  """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

  def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float = 4.0, dropout: float = 0.0,
               drop_path_rate: float = 0.0, dtype, rngs: nnx.Rngs):
    self.norm1 = layer_norm(dim, dtype=dtype, rngs=rngs)
    self.attn = Attention(dim, num_heads, dropout=dropout, dtype=dtype, rngs=rngs)
    self.norm2 = layer_norm(dim, dtype=dtype, rngs=rngs)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout=dropout, dtype=dtype, rngs=rngs)
    self.drop_path = drop_path(drop_path_rate, rngs=rngs)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    y, weights = self.attn(self.norm1(x))
    x = x + self.drop_path(y)
    return x + self.drop_path(self.mlp(self.norm2(x))), weights


def resize_pos_embed(pos_embed: np.ndarray | jax.Array, grid: tuple[int, int],
                     num_prefix_tokens: int = 1) -> jax.Array:
  """A [1, prefix + h·w, D] position embedding resampled bicubically to `grid` (h', w').

  The class-token entries are kept; the square patch grid is resized with
  antialiasing, as timm's `resample_abs_pos_embed` (PyTorch's bicubic with
  `antialias=True` and JAX's bicubic use the same Keys kernel).
  """
  pos_embed = jnp.asarray(pos_embed, jnp.float32)
  prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
  side = int(round(patches.shape[1]**0.5))
  if side * side != patches.shape[1]:
    raise WeightImportError(
        f"position embedding with {patches.shape[1]} patch tokens is not a square grid")
  if (side, side) == tuple(grid):
    return pos_embed
  dim = patches.shape[-1]
  patches = jax.image.resize(patches.reshape(1, side, side, dim), (1, *grid, dim), "bicubic",
                             antialias=True)
  return jnp.concatenate([prefix, patches.reshape(1, -1, dim)], axis=1)


class VisionTransformer(nnx.Module):
  """ViT with a class token; see the module docstring."""

  def __init__(self, *, num_classes: int, image_size: int = 224, patch_size: int = 16,
               dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
               in_channels: int = 3, dropout: float = 0.0, drop_path_rate: float = 0.0,
               dtype=jnp.float32, rngs: nnx.Rngs):
    if image_size % patch_size:
      raise ConfigError(
          f"a ViT with {patch_size} px patches needs an image size that is a multiple of "
          f"{patch_size}, got {image_size} (set data.image_size)")
    self.patch_size = patch_size
    self.grid = (image_size // patch_size,) * 2
    self.patch_embed = PatchEmbed(in_channels, dim, patch_size, dtype=dtype, rngs=rngs)
    self.cls_token = nnx.Param(nnx.initializers.normal(1e-6)(rngs.params(), (1, 1, dim)))
    self.pos_embed = nnx.Param(_init(rngs.params(), (1, 1 + self.grid[0] * self.grid[1], dim)))
    self.pos_drop = nnx.Dropout(dropout, rngs=rngs)
    rates = np.linspace(0.0, drop_path_rate, depth)
    self.blocks = nnx.List([
        Block(dim, num_heads, mlp_ratio=mlp_ratio, dropout=dropout, drop_path_rate=float(rate),
              dtype=dtype, rngs=rngs) for rate in rates])
    self.norm = layer_norm(dim, dtype=dtype, rngs=rngs)
    self.head_drop = nnx.Dropout(dropout, rngs=rngs)
    self.head = linear(dim, num_classes, dtype=dtype, rngs=rngs)

  def layer_groups(self) -> list[tuple[str, ...]]:
    """The embeddings, each block, the final norm, then the head (see `vision.models`)."""
    return ([("patch_embed", "cls_token", "pos_embed")] +
            [(f"blocks.{i}",) for i in range(len(self.blocks))] + [("norm",), ("head",)])

  def _tokens(self, x: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    """The normalised tokens [B, 1 + N, D] and each block's attention weights."""
    expected = tuple(g * self.patch_size for g in self.grid)
    if tuple(x.shape[1:3]) != expected:
      raise ValueError(
          f"this ViT was built for {expected[0]}×{expected[1]} images, got "
          f"{x.shape[1]}×{x.shape[2]}: resize the images, or create the model with "
          f"ModelOptions(image_size={x.shape[1]}) (weights are resized on import)")
    x = self.patch_embed(x)
    # The class token takes the patches' sharding (batch over 'data' under the train mesh).
    cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]),
                           out_sharding=jax.typeof(x).sharding)
    x = jnp.concatenate([cls, x], axis=1) + self.pos_embed[...].astype(x.dtype)
    x = self.pos_drop(x)
    maps = []
    for block in self.blocks:
      x, weights = block(gradient_barrier(x))
      maps.append(weights)
    return self.norm(x), maps

  def features(self, x: jax.Array) -> jax.Array:
    """The class token after the final LayerNorm, [B, D]."""
    return lax.index_in_dim(self._tokens(x)[0], 0, axis=1, keepdims=False)  # see Attention

  def attention_maps(self, x: jax.Array) -> jax.Array:
    """Every block's attention weights (softmax over keys), [depth, B, heads, 1+N, 1+N], fp32.

    Token 0 is the class token; tokens 1.. are the patches in row-major order,
    so `maps[-1, :, :, 0, 1:].reshape(B, heads, *model.grid)` is where the
    class token looks in the last block.
    """
    return jnp.stack(self._tokens(x)[1])

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.head(self.head_drop(self.features(x))).astype(jnp.float32)


# ----------------------------------------------------------------- PyTorch import

def _torchvision_to_timm(name: str) -> str | None:
  """torchvision's `VisionTransformer` tensor name in timm's naming (None: not a ViT tensor)."""
  fixed = {"class_token": "cls_token", "encoder.pos_embedding": "pos_embed",
           "conv_proj.weight": "patch_embed.proj.weight",
           "conv_proj.bias": "patch_embed.proj.bias", "encoder.ln.weight": "norm.weight",
           "encoder.ln.bias": "norm.bias", "heads.head.weight": "head.weight",
           "heads.head.bias": "head.bias"}
  if name in fixed:
    return fixed[name]
  match = re.fullmatch(r"encoder\.layers\.encoder_layer_(\d+)\.(.+)\.(weight|bias)", name)
  if not match:
    return None
  index, layer, kind = match.groups()
  layer_names = {"ln_1": "norm1", "ln_2": "norm2", "self_attention.out_proj": "attn.proj",
                 "mlp.0": "mlp.fc1", "mlp.3": "mlp.fc2", "mlp.linear_1": "mlp.fc1",
                 "mlp.linear_2": "mlp.fc2"}
  if layer == "self_attention.in_proj":
    return f"blocks.{index}.attn.qkv.{kind}"
  return f"blocks.{index}.{layer_names[layer]}.{kind}" if layer in layer_names else None


def _from_torchvision(state_dict: StateDict) -> dict[str, np.ndarray]:
  out = {}
  for name, value in state_dict.items():
    if name.startswith("encoder.layers.") and "in_proj_" in name:
      name = name.replace("in_proj_", "in_proj.")
    out[_torchvision_to_timm(name) or name] = value
  return out


def _from_hf(state_dict: StateDict) -> dict[str, np.ndarray]:
  """Hugging Face `ViTForImageClassification` names → timm's (q, k, v joined into qkv)."""
  state = {name.removeprefix("vit."): value for name, value in state_dict.items()}
  fixed = {"embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed",
           "embeddings.patch_embeddings.projection": "patch_embed.proj", "layernorm": "norm",
           "classifier": "head"}
  layer_names = {"layernorm_before": "norm1", "layernorm_after": "norm2",
                 "attention.output.dense": "attn.proj", "intermediate.dense": "mlp.fc1",
                 "output.dense": "mlp.fc2"}
  out: dict[str, np.ndarray] = {}
  for name, value in state.items():
    stem, _, kind = name.rpartition(".")
    match = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)", stem)
    if name in fixed:
      out[fixed[name]] = value
    elif stem in fixed:
      out[f"{fixed[stem]}.{kind}"] = value
    elif match and match.group(2) in layer_names:
      out[f"blocks.{match.group(1)}.{layer_names[match.group(2)]}.{kind}"] = value
    elif match and match.group(2).startswith("attention.attention."):
      continue  # query / key / value: joined below
    else:
      out[name] = value
  for index in sorted({int(m.group(1)) for n in state
                       if (m := re.fullmatch(r"encoder\.layer\.(\d+)\.attention\.attention\..+",
                                             n))}):
    prefix = f"encoder.layer.{index}.attention.attention"
    for kind in ("weight", "bias"):
      parts = [f"{prefix}.{p}.{kind}" for p in ("query", "key", "value")]
      if all(p in state for p in parts):
        out[f"blocks.{index}.attn.qkv.{kind}"] = np.concatenate(
            [np.asarray(state[p]) for p in parts], axis=0)
  return out


def load_timm_state(model: VisionTransformer, state_dict: StateDict, source: str = "timm") -> None:
  """Copies a state dict in timm's naming into `model`, resizing the position embedding."""
  tensors = TorchState(state_dict, source)
  tensors.conv(model.patch_embed.proj, "patch_embed.proj")
  assign(model.cls_token, tensors.take("cls_token").reshape(1, 1, -1), "cls_token")
  pos_embed = tensors.take("pos_embed")
  if pos_embed.ndim == 2:  # Hugging Face and some exports drop the batch axis.
    pos_embed = pos_embed[None]
  assign(model.pos_embed, np.asarray(resize_pos_embed(pos_embed, model.grid)), "pos_embed")
  for index, block in enumerate(model.blocks):
    prefix = f"blocks.{index}"
    tensors.layer_norm(block.norm1, f"{prefix}.norm1")
    tensors.linear(block.attn.qkv, f"{prefix}.attn.qkv")
    tensors.linear(block.attn.proj, f"{prefix}.attn.proj")
    tensors.layer_norm(block.norm2, f"{prefix}.norm2")
    tensors.linear(block.mlp.fc1, f"{prefix}.mlp.fc1")
    tensors.linear(block.mlp.fc2, f"{prefix}.mlp.fc2")
  tensors.layer_norm(model.norm, "norm")
  tensors.linear(model.head, "head")
  tensors.finish()


_CONVERTERS = {"timm": dict, "torchvision": _from_torchvision, "hf": _from_hf}


def _importer(name: str):
  def import_state(model: VisionTransformer, state_dict: StateDict, source: str) -> None:
    torch_import.check_source(name, source, tuple(_CONVERTERS))
    load_timm_state(model, _CONVERTERS[source](state_dict), source)
  return import_state


def _builder(dim: int, depth: int, num_heads: int, patch_size: int):
  def build(options: ModelOptions, rngs: nnx.Rngs) -> VisionTransformer:
    return VisionTransformer(
        num_classes=options.num_classes, image_size=options.image_size, patch_size=patch_size,
        dim=dim, depth=depth, num_heads=num_heads, in_channels=options.in_channels,
        dropout=options.dropout, drop_path_rate=options.drop_path,
        dtype=options.compute_dtype, rngs=rngs)
  return build


for _size, (_dim, _depth, _heads) in _SIZES.items():
  for _patch in (16, 32):
    _name = f"vit_{_size}{_patch}"
    MODELS[_name] = _builder(_dim, _depth, _heads, _patch)
    torch_import.TORCH_IMPORTERS[_name] = _importer(_name)
