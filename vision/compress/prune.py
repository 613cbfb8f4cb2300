"""Gradual magnitude pruning (Zhu & Gupta 2017) as an optax transformation.

    tx = prune.wrap_optimizer(config.prune, model, tx, total_steps=10_000)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)    # the train step is unchanged

`masked(tx, spec)` runs `tx`, then rewrites the updates so that every masked
weight becomes exactly zero, and keeps the masks in its optax state (so they
are part of the training state: checkpointed, restored, identical after a
kill -9 and resume). Masks are recomputed from weight magnitudes every
`update_every` steps between `start` and `end` (fractions of training), with
the target sparsity rising as Zhu & Gupta's cubic schedule

    s_t = s_f · (1 − (1 − (t − t_0) / (t_end − t_0))³)

and stay fixed from `end` on, so the last part of training fine-tunes the
surviving weights (`schedule="one_shot"`: the whole target at `start`, once). `granularity="unstructured"` ranks single weights by |w|;
`"channel"` ranks the output channels of convolutions by their mean |w| (L1
norm over the channel's weights, divided by their count so layers compare) and
masks a channel's kernel slice together with the BatchNorm scale and bias that
follow it, so a pruned channel outputs exactly zero and
`vision.compress.channels.shrink_model_dir` can remove it. `scope="global"`
ranks across all prunable layers, `"layer"` prunes each layer to the target.
Prunable: kernels (ndim ≥ 2) whose dotted path ("stages.1.conv.kernel")
matches none of `exclude`; by default the first convolution and the head.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, NamedTuple, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import optax

from vision.config import ConfigError


def param_name(path) -> str:
  """The dotted name of a parameter from a pytree path: "stages.1.conv.kernel"."""
  return jax.tree_util.keystr(tuple(path), simple=True, separator=".").removesuffix(".value")


@dataclasses.dataclass(frozen=True)
class ChannelGroup:
  """A convolution's output channels and the per-channel parameters that follow it."""
  kernel: str                      # [kh, kw, in, out]: channel c is kernel[..., c]
  companions: tuple[str, ...] = ()  # [out] vectors (BatchNorm scale, bias)


@dataclasses.dataclass(frozen=True)
class PruneSpec:
  """What to prune and when, in steps (see the module docstring)."""
  sparsity: float
  granularity: str
  scope: str
  start_step: int
  end_step: int
  update_every: int
  prunable: tuple[str, ...]                 # unstructured: kernel names
  channel_groups: tuple[ChannelGroup, ...] = ()

  def sparsity_at(self, step: jax.Array) -> jax.Array:
    """Zhu & Gupta's cubic ramp from 0 at `start_step` to `sparsity` at `end_step`."""
    span = max(1, self.end_step - self.start_step)
    progress = jnp.clip((step - self.start_step) / span, 0.0, 1.0)
    # From `end_step` on the target holds, also when start == end (prune once, then fixed).
    progress = jnp.where(step >= self.end_step, 1.0, progress)
    return self.sparsity * (1.0 - (1.0 - progress) ** 3)

  def is_update_step(self, step: jax.Array) -> jax.Array:
    in_window = (step >= self.start_step) & (step <= self.end_step)
    on_grid = ((step - self.start_step) % self.update_every == 0) | (step == self.end_step)
    return in_window & on_grid


def keep_mask(scores: jax.Array, fraction: jax.Array) -> jax.Array:
  """True for all but the floor(fraction · n) lowest scores (ties: earlier index pruned first)."""
  flat = scores.reshape(-1)
  count = jnp.floor(fraction * flat.size).astype(jnp.int32)
  order = jnp.argsort(flat, stable=True)
  keep_sorted = jnp.arange(flat.size) >= count
  return jnp.zeros(flat.size, bool).at[order].set(keep_sorted).reshape(scores.shape)


def _keep_masks(scores: dict[str, jax.Array], fraction: jax.Array, scope: str,
                keep_one: bool = False) -> dict[str, jax.Array]:
  if scope == "layer":
    return {name: keep_mask(s, fraction) for name, s in scores.items()}
  names = list(scores)
  if keep_one:
    # Each layer's strongest channel survives global ranking: a layer never vanishes.
    scores = {n: jnp.where(s == s.max(), jnp.inf, s) for n, s in scores.items()}
  flat = keep_mask(jnp.concatenate([scores[n].reshape(-1) for n in names]), fraction)
  splits = jnp.split(flat, list(_cumulative([scores[n].size for n in names]))[:-1])
  return {n: part.reshape(scores[n].shape) for n, part in zip(names, splits)}


def _cumulative(sizes: Sequence[int]):
  total = 0
  for size in sizes:
    total += size
    yield total


def compute_masks(spec: PruneSpec, params: dict[str, jax.Array],
                  fraction: jax.Array) -> dict[str, jax.Array]:
  """{name: bool mask} for the pruned parameters, at sparsity `fraction`."""
  if spec.granularity == "unstructured":
    return _keep_masks({n: jnp.abs(params[n]) for n in spec.prunable}, fraction, spec.scope)
  channel_scores = {g.kernel: jnp.abs(params[g.kernel]).reshape(-1, params[g.kernel].shape[-1])
                    .mean(axis=0) for g in spec.channel_groups}
  keep = _keep_masks(channel_scores, fraction, spec.scope, keep_one=True)
  masks = {}
  for group in spec.channel_groups:
    channels = keep[group.kernel]
    masks[group.kernel] = jnp.broadcast_to(channels, params[group.kernel].shape)
    masks.update({name: channels for name in group.companions})
  return masks


class PruneState(NamedTuple):
  count: jax.Array   # updates applied so far (the train step index, from 0)
  masks: Any         # bool, the shape of params (all True where nothing is pruned)


def masked(spec: PruneSpec) -> optax.GradientTransformation:
  """Chain it last: zeroes masked weights in the final updates and keeps the masks."""

  def init(params):
    return PruneState(jnp.zeros([], jnp.int32),
                      jax.tree.map(lambda p: jnp.ones(jnp.shape(p), bool), params))

  def update(updates, state: PruneState, params=None):
    if params is None:
      raise ValueError("pruning needs the parameters: call tx.update(grads, state, params)")
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = [param_name(path) for path, _ in leaves]
    named = dict(zip(names, (leaf for _, leaf in leaves)))
    old_masks = dict(zip(names, jax.tree.leaves(state.masks)))

    def recompute():
      new = compute_masks(spec, named, spec.sparsity_at(state.count))
      return {n: new.get(n, old_masks[n]) for n in names}

    masks = jax.lax.cond(spec.is_update_step(state.count), recompute, lambda: old_masks)
    new_masks = jax.tree_util.tree_unflatten(jax.tree.structure(state.masks),
                                             [masks[n] for n in names])
    mask_tree = jax.tree_util.tree_unflatten(treedef, [masks[n] for n in names])
    # Kept weights move as `tx` says; masked ones step to exactly zero (p + (-p) == 0).
    updates = jax.tree.map(lambda u, p, m: jnp.where(m, u, -p), updates, params, mask_tree)
    return updates, PruneState(state.count + 1, new_masks)

  return optax.GradientTransformation(init, update)


def sparsity_of(tree: Any, names: Sequence[str]) -> float:
  """The fraction of exact zeros among the parameters `names` of a params tree."""
  leaves = {param_name(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
  zeros = sum(int(jnp.sum(leaves[n] == 0)) for n in names)
  return zeros / max(1, sum(int(leaves[n].size) for n in names))


# ------------------------------------------------------------------ from a config

def default_exclude(model: nnx.Module) -> tuple[str, ...]:
  """Regexes for the first convolution (in depth order, by `layer_groups`) and the head."""
  kernels = [n for n, v in _named_params(model).items() if v.ndim == 4]
  first_group = model.layer_groups()[0]
  first = next((n for n in kernels if any(n.startswith(p + ".") for p in first_group)), None)
  return ((f"^{re.escape(first)}$",) if first else ()) + (r"^head\.",)


def _named_params(model: nnx.Module) -> dict[str, jax.Array]:
  state = nnx.state(model, nnx.Param)
  return {param_name(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}


def channel_groups(model: nnx.Module) -> tuple[ChannelGroup, ...]:
  """Each convolution followed by a BatchNorm in one block (`block.conv`, `block.norm`)."""
  groups = []
  for path, module in nnx.iter_graph(model):
    conv, norm = getattr(module, "conv", None), getattr(module, "norm", None)
    if isinstance(conv, nnx.Conv) and isinstance(norm, nnx.BatchNorm):
      prefix = ".".join(map(str, path))
      groups.append(ChannelGroup(f"{prefix}.conv.kernel",
                                 (f"{prefix}.norm.scale", f"{prefix}.norm.bias")))
  return tuple(groups)


def spec_from_config(prune_config: ml_collections.ConfigDict, model: nnx.Module, *,
                     total_steps: int, model_name: str = "") -> PruneSpec:
  """The PruneSpec of `config.prune` for this model; ConfigError when nothing is prunable."""
  patterns = (default_exclude(model) if prune_config.exclude is None
              else tuple(prune_config.exclude))
  try:
    excluded = [re.compile(p) for p in patterns]
  except re.error as error:
    raise ConfigError(f"config key 'prune.exclude': {error} in {patterns}") from None
  keep = lambda name: not any(p.search(name) for p in excluded)  # noqa: E731
  params = _named_params(model)
  prunable = tuple(n for n, v in params.items() if v.ndim >= 2 and keep(n))
  groups = ()
  if prune_config.granularity == "channel":
    groups = tuple(g for g in channel_groups(model) if keep(g.kernel))
    if model_name != "small_cnn":
      raise ConfigError(f"config key 'prune.granularity'='channel' rebuilds narrower models "
                        f"of model.name='small_cnn' only, not {model_name!r}; use "
                        "'unstructured' for this family")
  if not (groups if prune_config.granularity == "channel" else prunable):
    raise ConfigError(f"config key 'prune.exclude'={patterns} leaves nothing to prune; "
                      f"parameters: {', '.join(params)}")
  start = int(round(prune_config.start * total_steps))
  end = max(start, int(round(prune_config.end * total_steps)))
  if prune_config.schedule == "one_shot":
    end = start  # the whole target at `start`, then fixed: the baseline the ramp improves on
  return PruneSpec(prune_config.sparsity, prune_config.granularity, prune_config.scope,
                   start, end, max(1, prune_config.update_every), prunable, groups)


def wrap_optimizer(prune_config: ml_collections.ConfigDict, model: nnx.Module,
                   tx: optax.GradientTransformation, *, total_steps: int,
                   model_name: str = "") -> optax.GradientTransformation:
  """`tx` followed by pruning when `prune.sparsity` > 0, else `tx` itself."""
  if not prune_config.sparsity:
    return tx
  spec = spec_from_config(prune_config, model, total_steps=total_steps, model_name=model_name)
  return optax.chain(tx, masked(spec))
