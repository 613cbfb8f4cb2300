"""Transfer learning: start from a model directory, freeze, decay and unfreeze by layer group.

    model = create_model(...)
    load_pretrained(model, "runs/imagenet_mobilenet_v2", reset_head=False)   # model.init_from
    tx = make_optimizer(config, model, lr_schedule, steps_per_epoch=390)    # masks + multipliers
    steps = make_steps(config, model, optimizer, mesh, loss=..., steps_per_epoch=390)

Everything works on the model contract (`vision.models`): `model.layer_groups()`
lists the parameters in depth order, input first, head last. The modes
(`transfer.mode`):

  * `none` — every parameter trains at the optimizer's learning rate;
  * `fine_tune` — every group trains; group i of n gets the learning rate times
    `layer_decay ** (n - 1 - i)` (the head 1, the input stem the smallest);
  * `gradual_unfreeze` — fastai-style: the head trains first, then every
    `unfreeze_every_epochs` the next group down is unfrozen, each at its
    layer-decayed learning rate;
  * `linear_probe` — the backbone is frozen and only the head trains, on
    features computed once and cached (`vision.train.probe`).

Freezing is an optax mask: a frozen group's updates are exactly zero and its
optimizer state (momentum, Adam moments, weight decay) does not move, so its
parameters stay bit-identical. BatchNorm layers of frozen groups run on their
running statistics, which stay untouched; `transfer.freeze_batch_norm` does
that for every BatchNorm layer.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from typing import Any, Callable, NamedTuple, Optional

from flax import nnx
from flax import traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vision.checkpoint import MODEL_CARD, load_model, without_rng
from vision.config import ConfigError
from vision.models import vit
from vision.train import optim
from vision.train.step import Steps

log = logging.getLogger("vision")

MODES = ("none", "linear_probe", "fine_tune", "gradual_unfreeze")
HEAD = "head"


# ------------------------------------------------------------------ init_from

def flatten(tree: dict) -> dict[str, Any]:
  """A nested dict of arrays → {dotted name: array} ("stages.0.conv.kernel")."""
  return {".".join(map(str, key)): value
          for key, value in traverse_util.flatten_dict(tree).items()}


def is_head(name: str) -> bool:
  """Whether the dotted parameter name belongs to the model's head (the classifier)."""
  return name == HEAD or name.startswith(HEAD + ".")


def _resampled(model: nnx.Module, name: str, value: Any, shape: tuple) -> Any | None:
  """`value` resampled to `shape` where the tensor depends on the input size, else None.

  A ViT's position embedding follows the patch grid: fine-tuning at another image
  size resamples it bicubically, as timm's `resample_abs_pos_embed` does on load.
  """
  if isinstance(model, vit.VisionTransformer) and name == "pos_embed":
    resized = vit.resize_pos_embed(value, model.grid)
    return resized if tuple(resized.shape) == tuple(shape) else None
  return None


# Model options that change no parameter's shape.
_SHAPELESS_OPTIONS = ("dtype", "dropout", "drop_path", "conv_impl")


def _mismatch_causes(card, options) -> list[str]:
  """The settings in which this config's model differs from the one in `directory`."""
  causes = []
  if options is None:
    return causes
  if card.channels != options.in_channels:
    causes.append(f"data.channels ({options.in_channels} here, {card.channels} there)")
  for key, there in sorted(card.model_options.items()):
    here = getattr(options, key, there)
    if key not in _SHAPELESS_OPTIONS and tuple(np.ravel(here)) != tuple(np.ravel(there)):
      causes.append(f"model.{key} ({here} here, {there} there)")
  if card.image_size != options.image_size:
    causes.append(f"data.image_size ({options.image_size} here, {card.image_size} there; this "
                  f"family's parameters depend on the input size)")
  return causes


def load_pretrained(model: nnx.Module, directory: str | os.PathLike, *, arch: str,
                    reset_head: bool = False, options=None) -> None:
  """Copies the parameters of the model directory `directory` into `model` (in place).

  The head keeps its fresh initialisation when `reset_head` is set or when the
  number of classes differs; a ViT's position embedding is resampled to this
  model's patch grid (another image size). Any other missing or differently
  shaped tensor is a ConfigError naming it and, from `options` (the target's
  ModelOptions), the config keys in which the two models differ.
  """
  directory = pathlib.Path(directory)
  try:
    source, card = load_model(directory)
  except FileNotFoundError as error:
    raise ConfigError(f"config key 'model.init_from': {error}") from None
  if card.arch != arch:
    raise ConfigError(
        f"config key 'model.init_from': {directory} holds a {card.arch!r} model but "
        f"'model.name' is {arch!r}; set model.name={card.arch}")
  source_params = flatten(without_rng(nnx.state(source)))
  target_state = nnx.state(model)
  target = flatten(without_rng(target_state))
  new_head = reset_head or card.num_classes != model.head.out_features
  merged, mismatched, resampled = {}, [], []
  groups = model.layer_groups()
  # Input side first, so the error names the first tensor that differs.
  for name in sorted(target, key=lambda n: group_index(n, groups)):
    value = target[name]
    if (new_head or name not in source_params) and is_head(name):
      merged[name] = value  # a new head, or one of its extras (learned task weights) is new
    elif name not in source_params:
      mismatched.append(f"tensor '{name}' is missing from {directory}")
    elif source_params[name].shape != value.shape:
      adapted = _resampled(model, name, source_params[name], value.shape)
      if adapted is None:
        mismatched.append(
            f"tensor '{name}' has shape {tuple(source_params[name].shape)} in {directory} but "
            f"this config's model needs {tuple(value.shape)}")
      else:
        merged[name] = jnp.asarray(adapted, value.dtype)
        resampled.append(f"{name} {tuple(source_params[name].shape)} -> {tuple(value.shape)}")
    else:
      merged[name] = jnp.asarray(source_params[name], value.dtype)
  if mismatched:
    more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
    causes = _mismatch_causes(card, options)
    because = (f"this config's model differs from that one in {'; '.join(causes)}"
               if causes else f"its {MODEL_CARD} describes a model of the same options, so "
               "its checkpoint and card disagree")
    raise ConfigError(f"config key 'model.init_from': {mismatched[0]}{more}; {because}")
  if resampled:
    log.info("init_from %s: resampled %s to this image size", directory, ", ".join(resampled))
  restored = traverse_util.unflatten_dict({tuple(_key(k) for k in name.split(".")): v
                                           for name, v in merged.items()})
  nnx.replace_by_pure_dict(target_state, restored)
  nnx.update(model, target_state)
  log.info("init_from %s: copied %d tensors%s", directory,
           sum(1 for n in merged if not (new_head and is_head(n))),
           "; new head" if new_head else "")


def _key(part: str) -> str | int:
  return int(part) if part.isdigit() else part


def maybe_load_pretrained(config: ml_collections.ConfigDict, model: nnx.Module,
                          options=None) -> None:
  """Applies `model.init_from` (and `model.reset_head`) when set; `options`: the model's
  ModelOptions, which a mismatch error compares with the source's."""
  if config.model.init_from:
    load_pretrained(model, config.model.init_from, arch=config.model.name,
                    reset_head=config.model.reset_head, options=options)


# ------------------------------------------------------------------ layer groups

def _path_name(path) -> str:
  parts = []
  for entry in path:
    if isinstance(entry, jax.tree_util.DictKey):
      parts.append(str(entry.key))
    elif isinstance(entry, jax.tree_util.SequenceKey):
      parts.append(str(entry.idx))
  return ".".join(parts)


def group_index(name: str, groups: list[tuple[str, ...]]) -> int:
  """The index of the layer group holding the parameter `name` ("stages.0.conv.kernel")."""
  for index, group in enumerate(groups):
    if any(name == prefix or name.startswith(prefix + ".") for prefix in group):
      return index
  raise ValueError(f"parameter {name!r} is in no layer group of {groups}")


def group_labels(groups: list[tuple[str, ...]]) -> Callable[[Any], Any]:
  """For optax.multi_transform: a params tree → the same tree of group labels 'g<i>'."""
  def labels(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: f"g{group_index(_path_name(path), groups)}", params)
  return labels


def lr_multipliers(num_groups: int, layer_decay: float) -> list[float]:
  """layer_decay ** depth below the head: [.., d², d, 1]."""
  return [layer_decay ** (num_groups - 1 - i) for i in range(num_groups)]


def unfreeze_steps(transfer_config, num_groups: int, steps_per_epoch: int) -> list[int | None]:
  """The step at which each group starts training; None: never (frozen)."""
  mode = transfer_config.mode
  if mode == "linear_probe":
    return [None] * (num_groups - 1) + [0]
  if mode == "gradual_unfreeze":
    every = max(1, round(transfer_config.unfreeze_every_epochs * steps_per_epoch))
    return [(num_groups - 1 - i) * every for i in range(num_groups)]
  return [0] * num_groups


# ------------------------------------------------------------------ optimizer

class GatedState(NamedTuple):
  count: jax.Array
  inner: optax.OptState


def gated(inner: optax.GradientTransformation, start: int) -> optax.GradientTransformation:
  """`inner` from update `start` on; before it, zero updates and a state that does not move."""
  def init(params):
    return GatedState(jnp.zeros([], jnp.int32), inner.init(params))

  def update(updates, state, params=None):
    new_updates, new_inner = inner.update(updates, state.inner, params)
    active = state.count >= start
    new_updates = jax.tree.map(lambda u: jnp.where(active, u, jnp.zeros_like(u)), new_updates)
    new_inner = jax.tree.map(lambda new, old: jnp.where(active, new, old), new_inner, state.inner)
    return new_updates, GatedState(state.count + 1, new_inner)

  return optax.GradientTransformation(init, update)


def _without_clip(optim_config) -> ml_collections.ConfigDict:
  copy = ml_collections.ConfigDict(optim_config.to_dict())
  copy.grad_clip_norm = None
  return copy


def _group_transform(optim_config, lr_schedule, multiplier: float,
                     start: int | None) -> optax.GradientTransformation:
  if start is None:
    return optax.set_to_zero()
  # The group's own step count starts when it is unfrozen; the LR follows the global schedule.
  schedule = lr_schedule if not start else (lambda count: lr_schedule(count + start))
  parts = [optim.make_optimizer(optim_config, schedule)]
  if multiplier != 1.0:
    parts.append(optax.scale(multiplier))
  tx = optax.chain(*parts) if len(parts) > 1 else parts[0]
  return gated(tx, start) if start else tx


def make_optimizer(config: ml_collections.ConfigDict, model: nnx.Module,
                   lr_schedule: optax.Schedule, *,
                   steps_per_epoch: int) -> optax.GradientTransformation:
  """The run's optimizer: `optim.make_optimizer`, masked and scaled per layer group."""
  mode = config.transfer.mode
  if mode == "none" or (mode == "fine_tune" and config.transfer.layer_decay == 1.0):
    return optim.make_optimizer(config.optim, lr_schedule)
  groups = model.layer_groups()
  multipliers = lr_multipliers(len(groups), config.transfer.layer_decay)
  starts = unfreeze_steps(config.transfer, len(groups), steps_per_epoch)
  inner_config = _without_clip(config.optim)
  transforms = {f"g{i}": _group_transform(inner_config, lr_schedule, multipliers[i], starts[i])
                for i in range(len(groups))}
  labels = group_labels(groups)
  parts = []
  if config.optim.grad_clip_norm:
    # Clip by the norm of the gradients that are applied, so frozen groups do not count.
    parts.append(optax.multi_transform(
        {f"g{i}": (optax.set_to_zero() if start is None else gated(optax.identity(), start))
         for i, start in enumerate(starts)}, labels))
    parts.append(optax.clip_by_global_norm(config.optim.grad_clip_norm))
  parts.append(optax.multi_transform(transforms, labels))
  return optax.chain(*parts)


# ------------------------------------------------------------------ BatchNorm and steps

def submodule(model: nnx.Module, path: str) -> Any:
  node = model
  for part in path.split("."):
    node = node[int(part)] if part.isdigit() else getattr(node, part)
  return node


def use_running_statistics(model: nnx.Module, paths: tuple[str, ...]) -> None:
  """Runs every BatchNorm under `paths` on its running statistics (they stop updating)."""
  for path in paths:
    node = submodule(model, path)
    if isinstance(node, nnx.Module):
      node.set_attributes(use_running_average=True, raise_if_not_found=False)


def frozen_paths(groups: list[tuple[str, ...]], starts: list[int | None], step: int,
                 freeze_all: bool) -> tuple[str, ...]:
  """Module paths whose BatchNorm layers run on running statistics at `step`."""
  return tuple(path for group, start in zip(groups, starts)
               if freeze_all or start is None or step < start for path in group)


@dataclasses.dataclass
class PhasedTrain:
  """The train step, recompiled when the set of frozen groups changes (gradual unfreezing).

  The step number is read from the state once, then counted on the host.
  """
  compile_phase: Callable[[tuple[str, ...]], Callable]
  phase_of: Callable[[int], tuple[str, ...]]
  step: Optional[int] = None
  compiled: dict = dataclasses.field(default_factory=dict)

  def __call__(self, state, batch, rng):
    if self.step is None:
      self.step = int(jax.device_get(nnx.to_pure_dict(state.optimizer)["step"]))
    phase = self.phase_of(self.step)
    if phase not in self.compiled:
      log.info("step %d: BatchNorm on running statistics in %s", self.step,
               ", ".join(phase) or "no layer")
      self.compiled[phase] = self.compile_phase(phase)
    self.step += 1
    return self.compiled[phase](state, batch, rng)


def make_steps(config: ml_collections.ConfigDict, model: nnx.Module, optimizer: nnx.Optimizer,
               mesh: jax.sharding.Mesh, *, steps_per_epoch: int, **step_options):
  """`Steps.create`, with BatchNorm frozen where the transfer config says."""
  transfer = config.transfer
  if transfer.mode in ("none", "fine_tune"):
    configure = None
    if transfer.freeze_batch_norm:
      configure = lambda m: use_running_statistics(m, tuple(  # noqa: E731
          p for group in m.layer_groups() for p in group))
    return Steps.create(model, optimizer, mesh, configure_train=configure, **step_options)
  groups = model.layer_groups()
  starts = unfreeze_steps(transfer, len(groups), steps_per_epoch)

  def compile_phase(paths: tuple[str, ...]):
    return Steps.create(model, optimizer, mesh, **step_options,
                        configure_train=lambda m: use_running_statistics(m, paths)).train

  phase_of = lambda step: frozen_paths(groups, starts, step, transfer.freeze_batch_norm)  # noqa: E731
  base = Steps.create(model, optimizer, mesh, **step_options,
                      configure_train=lambda m: use_running_statistics(m, phase_of(0)))
  train = PhasedTrain(compile_phase, phase_of)
  train.compiled[phase_of(0)] = base.train
  return dataclasses.replace(base, train=train)
