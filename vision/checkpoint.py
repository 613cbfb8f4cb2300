"""Orbax checkpoints of a run, and the model directory every tool reads.

    checkpoints = Checkpoints(workdir, keep=2, best_metric="val/accuracy")
    checkpoints.save(step, state, data_iterator, metrics={"val/accuracy": 0.91})
    state = checkpoints.restore(checkpoints.latest_step(), state, data_iterator)

    model, card = load_model(workdir)          # evaluate / predict / export

A workdir is a model directory: `model_card.json` (architecture, classes,
input spec, preprocessing) plus `checkpoints/<step>/` with three items: `model`
(parameters and BatchNorm statistics), `optimizer` and `data` (the grain
iterator position, one file per process). Orbax keeps the latest
`keep` checkpoints and, beside them, the best one by the validation metric.
Saves are atomic (a temporary directory renamed when complete), so a run
killed at any moment resumes from its last complete checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, NamedTuple

from flax import nnx
import grain
import jax
import orbax.checkpoint as ocp

from vision.compress import quant
from vision.errors import ConfigError
from vision.files import write_text_atomically
from vision.models import ModelOptions, create_model

MODEL_CARD = "model_card.json"
CHECKPOINTS = "checkpoints"


class TrainState(NamedTuple):
  """What a training checkpoint holds besides the data position: model and optimizer states."""
  model: nnx.State
  optimizer: nnx.State


def without_rng(state: nnx.State) -> dict:
  """A model state as a pure dict of arrays, RNG streams left out (they are not saved).

  RNG keys are re-derived from (seed, step) each step, so resuming needs none.
  """
  return nnx.to_pure_dict(nnx.filter_state(state, nnx.Not(nnx.RngState)))


def _replace_by_pure_dict(state: nnx.State, pure: dict) -> None:
  """`nnx.replace_by_pure_dict`, also for variables whose value is itself a dict (Qwix's
  QuantStat: {count, sum_of_min, sum_of_max}); state entries absent from `pure` stay."""
  missing = object()

  def lookup(path):
    node = pure
    for key in path:
      if not isinstance(node, dict):
        return missing
      node = node.get(key, node.get(str(key), missing))
      if node is missing:
        return missing
    return node

  flat = {}
  for path, variable in nnx.to_flat_state(state):
    value = lookup(path)
    flat[path] = variable if value is missing else (
        variable.replace(value) if hasattr(variable, "replace") else value)
  state.update(nnx.traversals.unflatten_mapping(flat))
class IncompatibleCheckpoint(ConfigError):
  """A workdir's checkpoint does not fit the model (or optimizer) of this config; one line."""


def _flat_shapes(tree: Any) -> dict[str, tuple]:
  """'a.b.c' -> (shape, dtype name) for every array of a pure-dict tree or Orbax metadata."""
  return {".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path):
          (tuple(leaf.shape), str(leaf.dtype))
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _first_difference(saved: dict[str, tuple], wanted: dict[str, tuple]) -> str | None:
  """The first tensor that differs between two `_flat_shapes`, in words, or None."""
  for name in sorted(set(saved) | set(wanted)):
    if name not in saved:
      return f"tensor '{name}' is not in the checkpoint"
    if name not in wanted:
      return f"the checkpoint's tensor '{name}' is not in this config's model"
    if saved[name] != wanted[name]:
      return (f"tensor '{name}' is {saved[name][0]} {saved[name][1]} in the checkpoint but "
              f"{wanted[name][0]} {wanted[name][1]} in this config's model")
  return None


def _abstract(tree: Any) -> Any:
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      tree)


class Checkpoints:
  """The run's CheckpointManager: latest `keep` checkpoints plus the best one."""

  def __init__(self, workdir: str | os.PathLike, *, keep: int = 2,
               best_metric: str = "val/accuracy", read_only: bool = False):
    self.best_metric = best_metric
    self.higher_is_better = higher_is_better = (
        "loss" not in best_metric and "error" not in best_metric)
    policy = ocp.checkpoint_managers.AnyPreservationPolicy([
        ocp.checkpoint_managers.LatestN(keep),
        ocp.checkpoint_managers.BestN(
            get_metric_fn=lambda metrics: metrics[best_metric], reverse=not higher_is_better,
            n=1, keep_checkpoints_without_metrics=False),
    ])
    # best_fn makes Orbax write each save's metrics to disk, so the best step is known to later
    # processes too (evaluate, predict, a resumed run); the policy above decides what is kept.
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, best_fn=lambda metrics: metrics[best_metric],
        best_mode="max" if higher_is_better else "min", enable_async_checkpointing=False,
        cleanup_tmp_directories=True, read_only=read_only, create=not read_only)
    self.manager = ocp.CheckpointManager(
        pathlib.Path(workdir).absolute() / CHECKPOINTS, options=options,
        item_names=("model", "optimizer", "data"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    """The step with the best `best_metric`, or None when no save recorded it."""
    scored = []
    for step in self.manager.all_steps():
      metrics = self.manager.metrics(step) or {}
      if self.best_metric in metrics:
        scored.append((metrics[self.best_metric], step))
    if not scored:
      return None
    return (max if self.higher_is_better else min)(scored)[1]

  def save(self, step: int, state: TrainState, data_iterator: grain.DatasetIterator,
           metrics: dict[str, float] | None = None) -> None:
    if step in self.manager.all_steps():
      return
    kept_metrics = {self.best_metric: metrics[self.best_metric]} if (
        metrics and self.best_metric in metrics) else None
    self.manager.save(step, metrics=kept_metrics, args=ocp.args.Composite(
        model=ocp.args.StandardSave(without_rng(state.model)),
        optimizer=ocp.args.StandardSave(nnx.to_pure_dict(state.optimizer)),
        data=grain.checkpoint.CheckpointSave(data_iterator)))

  def save_model(self, step: int, model: nnx.Module) -> None:
    """Saves the model's parameters alone (an imported model has no optimizer or data state)."""
    self.manager.save(step, args=ocp.args.Composite(
        model=ocp.args.StandardSave(without_rng(nnx.state(model)))))

  def saved_shapes(self, step: int, item: str) -> dict[str, tuple]:
    """'a.b.c' -> (shape, dtype) of every array of `item` saved at `step`, read from metadata."""
    path = self.manager.directory / str(step) / item
    if not (path / "_METADATA").is_file():
      # Without it Orbax may still answer with part of the tree: a damaged save, not a mismatch.
      raise IncompatibleCheckpoint(f"cannot read the checkpoint {path}: its _METADATA file is "
                                   "missing (an interrupted copy or save); use another step or "
                                   "copy the directory again")
    try:
      with ocp.StandardCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(path)
    except (ValueError, KeyError, TypeError, OSError) as error:
      raise IncompatibleCheckpoint(f"cannot read the checkpoint {path}: {_first_line(error)}"
                                   ) from None
    tree = getattr(metadata, "item_metadata", metadata)
    return _flat_shapes(getattr(tree, "tree", tree))

  def check_fits(self, step: int, like: TrainState, *, changed_keys: list[str],
                 workdir: str | os.PathLike) -> None:
    """Raises IncompatibleCheckpoint when `like` has another structure than the save at `step`.

    Reads metadata only, so a workdir is judged before anything in it is written.
    """
    for item, wanted, what in (
        ("model", without_rng(like.model), "model"),
        ("optimizer", nnx.to_pure_dict(like.optimizer), "optimizer state")):
      difference = _first_difference(self.saved_shapes(step, item), _flat_shapes(wanted))
      if difference is not None:
        raise IncompatibleCheckpoint(
            f"--workdir {workdir} holds a checkpoint (step {step}) of another {what}: "
            f"{difference} (config keys changed since that run: "
            f"{', '.join(changed_keys) or 'none'}); resume with that run's settings, or train "
            f"in a new --workdir (model.init_from={workdir} starts from its weights)")

  def restore(self, step: int, like: TrainState,
              data_iterator: grain.DatasetIterator) -> TrainState:
    """`like` with the values saved at `step`; also moves `data_iterator` there."""
    model_target = _abstract(without_rng(like.model))
    optimizer_target = _abstract(nnx.to_pure_dict(like.optimizer))
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          model=ocp.args.StandardRestore(model_target),
          optimizer=ocp.args.StandardRestore(optimizer_target),
          data=grain.checkpoint.CheckpointRestore(data_iterator)))
    except (ValueError, KeyError, TypeError, FileNotFoundError) as error:
      raise IncompatibleCheckpoint(
          f"cannot restore {self.manager.directory / str(step)} into this config's run: "
          f"{_first_line(error)}; resume with that run's settings, or use a new --workdir"
      ) from None
    model_state = jax.tree.map(lambda x: x, like.model)
    _replace_by_pure_dict(model_state, restored["model"])
    optimizer_state = jax.tree.map(lambda x: x, like.optimizer)
    _replace_by_pure_dict(optimizer_state, restored["optimizer"])
    return TrainState(model_state, optimizer_state)

  def restore_model(self, step: int, model: nnx.Module) -> None:
    """Loads the parameters saved at `step` into `model` (in place)."""
    target = _abstract(without_rng(nnx.state(model)))
    directory = self.manager.directory / str(step)
    difference = _first_difference(self.saved_shapes(step, "model"), _flat_shapes(target))
    if difference is not None:
      raise IncompatibleCheckpoint(
          f"{directory} does not hold the model its {MODEL_CARD} describes: {difference}")
    try:
      restored = self.manager.restore(
          step, args=ocp.args.Composite(model=ocp.args.StandardRestore(target)))
    except (ValueError, KeyError, TypeError, FileNotFoundError) as error:
      raise IncompatibleCheckpoint(f"cannot read the model saved in {directory}: "
                                   f"{_first_line(error)}") from None
    state = nnx.state(model)
    _replace_by_pure_dict(state, restored["model"])
    nnx.update(model, state)

  def close(self) -> None:
    self.manager.close()


def _first_line(error: BaseException) -> str:
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return (lines[0] if lines else type(error).__name__)[:300]


# -------------------------------------------------------------- model directory

@dataclasses.dataclass(frozen=True)
class ModelCard:
  """What a model directory says about its model: enough to rebuild and feed it."""
  arch: str
  num_classes: int
  class_names: tuple[str, ...]
  image_size: int
  channels: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  model_options: dict
  # The validation metric that ranks this directory's checkpoints.
  best_metric: str = "val/accuracy"
  # Evaluation resizing (torchvision's Resize(resize_size) + CenterCrop(image_size)):
  # the shorter side goes to `resize_size` (None: straight to `image_size`).
  resize_size: int | None = None
  interpolation: str = "bilinear"
  # Quantization-aware training ({"mode": "qat", "weight_bits": 8, "activation_bits": 8}), or
  # None: load_model re-applies it so the model computes what training simulated.
  quantization: dict | None = None
  # What the outputs mean (vision.tasks: to_json of the task); None: single-label classification.
  task: dict | None = None

  def options(self) -> ModelOptions:
    return ModelOptions(**{**self.model_options, "num_classes": self.num_classes,
                           "in_channels": self.channels, "image_size": self.image_size})

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2)

  @classmethod
  def read(cls, workdir: str | os.PathLike) -> "ModelCard":
    path = pathlib.Path(workdir) / MODEL_CARD
    if not path.exists():
      raise FileNotFoundError(
          f"{path} does not exist: --workdir must be a directory written by "
          "experiments.train (or experiments.import_weights)")
    try:
      fields = json.loads(path.read_text())
      for key in ("class_names", "mean", "std"):
        fields[key] = tuple(fields[key])
      fields["model_options"]["widths"] = tuple(fields["model_options"].get("widths", ()))
      return cls(**fields)
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
      raise ConfigError(f"{path} is not a model card written by this version ({error}); "
                        "--workdir must be a directory written by experiments.train (or "
                        "experiments.import_weights)") from None

  def write(self, workdir: str | os.PathLike) -> None:
    write_text_atomically(pathlib.Path(workdir) / MODEL_CARD, self.to_json())


def write_model_dir(workdir: str | os.PathLike, model: nnx.Module, card: ModelCard) -> None:
  """Writes a model directory holding `model` alone (step 0) and its card."""
  pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
  checkpoints = Checkpoints(workdir, best_metric=card.best_metric)
  checkpoints.save_model(0, model)
  checkpoints.close()
  card.write(workdir)


def load_model(workdir: str | os.PathLike, *, which: str = "best") -> tuple[nnx.Module, ModelCard]:
  """The model of a model directory (eval mode) and its card.

  `which='best'` takes the best checkpoint by the validation metric when the
  run recorded one, else the latest.
  """
  card = ModelCard.read(workdir)
  model = create_model(card.arch, card.options(), rngs=nnx.Rngs(0))
  model = quant.from_card(model, card.quantization, (card.image_size,) * 2 + (card.channels,))
  checkpoints = Checkpoints(workdir, best_metric=card.best_metric, read_only=True)
  step = (checkpoints.best_step() if which == "best" else None) or checkpoints.latest_step()
  if step is None:
    raise FileNotFoundError(f"{pathlib.Path(workdir) / CHECKPOINTS} holds no checkpoint")
  checkpoints.restore_model(step, model)
  checkpoints.close()
  model.eval()
  return model, card
