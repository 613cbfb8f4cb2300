"""Linear probe: a frozen backbone's features computed once, cached, and a new head trained on them.

    python -m experiments.train --config=configs/NAME.py --workdir=runs/probe \
        --config.transfer.mode=linear_probe --config.model.init_from=runs/imagenet_mobilenet_v2

    report = train_probe(config, workdir)    # what vision.train.trainer.train calls for linear_probe

`model.features` (eval mode, batched, through the mesh) runs once per split;
the result lands in `WORKDIR/features/{split}.npz` with a fingerprint of the
backbone's parameters and of the data (config, files, example count), so a
cache is reused only when both match. The head then trains on the cached
features with the config's optimizer, schedule, batch size and epochs, the
validation split scored at each eval step; the objective, metrics and reports
are the task's (vision.tasks), as in the training loop. The workdir is an ordinary model
directory: checkpoints of the full model (backbone + head, best one by the
validation metric), model_card.json, eval/{val,test}/ reports, metrics.jsonl
and W&B. Re-running retrains the head from the cache (deterministic); a
workdir whose checkpoints came from other features is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import types

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vision import checkpoint as checkpoint_lib
from vision import config as config_lib
from vision import parallel, tasks
from vision.checkpoint import TrainState
from vision.config import ConfigError
from vision.data import open_from_config, pipeline
from vision.data.sources import RecordSource
from vision.evaluate import evaluate as evaluate_lib
from vision.evaluate.inference import predict_split
from vision.files import write_atomically, write_text_atomically
from vision.train import optim
from vision.train.build import build_model
from vision.train.metrics import create_writer, mean_metrics
from vision.train.schedule import Schedule
from vision.train.transfer import flatten, is_head

log = logging.getLogger("vision")

FEATURES_DIR = "features"
PROBE_FINGERPRINT = "probe_fingerprint.json"


# ------------------------------------------------------------------ fingerprints

def backbone_fingerprint(model: nnx.Module) -> str:
  """sha256 of every parameter and statistic outside the head (what the features depend on)."""
  digest = hashlib.sha256()
  for name, value in sorted(flatten(checkpoint_lib.without_rng(nnx.state(model))).items()):
    if is_head(name):
      continue
    array = np.asarray(jax.device_get(value))
    digest.update(f"{name}:{array.dtype}:{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
  return digest.hexdigest()


def _source_files(source: str) -> list[tuple[str, int, int]]:
  kind, _, location = source.partition(":")
  if kind not in ("idx", "folder") or not os.path.isdir(location):
    return []
  found = []
  for root, _, files in os.walk(location):
    for name in files:
      stat = os.stat(os.path.join(root, name))
      found.append((os.path.relpath(os.path.join(root, name), location), stat.st_size,
                    stat.st_mtime_ns))
  return sorted(found)


def data_fingerprint(data_config: ml_collections.ConfigDict, split: str,
                     records: RecordSource) -> str:
  """sha256 of what a split's features depend on besides the backbone."""
  payload = {"data": data_config.to_dict(), "split": split, "count": len(records),
             "files": _source_files(data_config.source)}
  return hashlib.sha256(json.dumps(payload, sort_keys=True, default=list).encode()).hexdigest()


# ------------------------------------------------------------------ feature cache

def compiled_features(model: nnx.Module, mesh: jax.sharding.Mesh):
  """A jitted `batch -> model.features(images)` (eval mode, float32), batch sharded over the mesh."""
  model.eval()
  graphdef, state = nnx.split(model)
  state = parallel.replicate(state, mesh)

  @jax.jit
  def features(state, batch):
    return nnx.merge(graphdef, state).features(batch["image"]).astype(jnp.float32)

  return lambda batch: features(state, batch)


def _label_fields(batch: dict) -> dict:
  return {key: value for key, value in batch.items() if key != "image"}


def cached_features(workdir: str | os.PathLike, split: str, records: RecordSource,
                    spec: pipeline.ImageSpec, *, features_fn, fingerprint: str, batch_size: int,
                    mesh: jax.sharding.Mesh, worker_count: int = 0
                    ) -> tuple[np.ndarray, dict[str, np.ndarray], bool]:
  """(features [N, D], label fields {'label': [N], ...}, reused) for a split, from the cache
  when it is current. The fields are what a batch carries besides the image."""
  path = pathlib.Path(workdir) / FEATURES_DIR / f"{split}.npz"
  if path.exists():
    with np.load(path) as cached:
      if str(cached["fingerprint"]) == fingerprint and "field_names" in cached:
        fields = {str(name): cached[f"field{i}"] for i, name in enumerate(cached["field_names"])}
        log.info("features/%s: reused the cache (%d examples)", split, len(cached["features"]))
        return cached["features"], fields, True
    log.info("features/%s: cache is stale (backbone or data changed); recomputing", split)
  fields, features = predict_split(features_fn, records, spec, batch_size=batch_size,
                                   mesh=mesh, worker_count=worker_count, targets=_label_fields)
  if parallel.is_main_process():
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: pathlib.Path) -> None:
      with open(tmp, "wb") as file:
        np.savez(file, features=features, fingerprint=np.array(fingerprint),
                 field_names=np.array(list(fields)),
                 **{f"field{i}": value for i, value in enumerate(fields.values())})

    write_atomically(path, write)
  log.info("features/%s: computed %d × %d", split, *features.shape)
  return features, fields, False


# ------------------------------------------------------------------ head training

class Head:
  """The model's head as a pure function of its parameters."""

  def __init__(self, module: nnx.Module):
    self.graphdef, self.template = nnx.split(module)
    self.params = nnx.to_pure_dict(self.template)

  def module(self, params) -> nnx.Module:
    state = jax.tree.map(lambda x: x, self.template)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(self.graphdef, state)

  def __call__(self, params, features: jax.Array) -> jax.Array:
    return self.module(params)(features).astype(jnp.float32)

  def as_model(self, params):
    """What a loss sees as the model: the head is all it may read (learned task weights)."""
    return types.SimpleNamespace(head=self.module(params))


def _probabilities(task, head: Head, params, features: np.ndarray) -> np.ndarray:
  return np.asarray(jax.jit(lambda p, x: task.probabilities(head(p, x)))(params, features))


def train_probe(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
  """Trains the head of `model.init_from`'s backbone on cached features; returns the test report."""
  config = config_lib.validate(config)
  workdir = pathlib.Path(workdir)
  dataset, spec = open_from_config(config.data)
  splits = {
      config.data.train_split: pipeline.limit_examples(
          dataset.split(config.data.train_split), config.data.max_train_examples),
      config.data.val_split: pipeline.limit_examples(
          dataset.split(config.data.val_split), config.data.max_eval_examples),
      config.data.test_split: pipeline.limit_examples(
          dataset.split(config.data.test_split), config.data.max_eval_examples)}
  task = tasks.from_config(config, dataset)
  model, card = build_model(config, task, spec)
  card = dataclasses.replace(card, best_metric=task.best_metric(
      config.train, splits[config.data.train_split]))
  backbone = backbone_fingerprint(model)
  fingerprints = {split: hashlib.sha256(
      (backbone + data_fingerprint(config.data, split, records)).encode()).hexdigest()
                  for split, records in splits.items()}
  checkpoints = checkpoint_lib.Checkpoints(
      workdir, keep=config.train.keep_checkpoints, best_metric=card.best_metric)
  # Judged before anything is written: a refused workdir stays as it was.
  _refuse_stale_checkpoints(workdir, checkpoints, fingerprints)
  if parallel.is_main_process():
    workdir.mkdir(parents=True, exist_ok=True)
    config_lib.save_resolved(config, workdir)
    card.write(workdir)
    _write_fingerprints(workdir, fingerprints)
  mesh = parallel.make_mesh()
  features_fn = compiled_features(model, mesh)
  cache = {}
  for split, records in splits.items():
    features, fields, _ = cached_features(
        workdir, split, records, spec, features_fn=features_fn,
        fingerprint=fingerprints[split], mesh=mesh, worker_count=config.data.worker_count,
        batch_size=evaluate_lib.eval_batch_size(config.train.eval_batch_size))
    cache[split] = (features, fields)
  writer = create_writer(config, workdir, 0)
  try:
    head, params, schedule = _train_head(config, model, task, cache, checkpoints, workdir,
                                         splits[config.data.train_split], spec, writer)
    val_features, val_fields = cache[config.data.val_split]
    # As at the end of the loop's training: the temperature (in the model card), then the task's
    # own tuning, both on validation.
    task = task.calibrate(task.targets(val_fields),
                          np.asarray(jax.jit(head)(params, val_features)))
    task = task.fit(lambda: (task.targets(val_fields),
                             _probabilities(task, head, params, val_features)))
    if parallel.is_main_process():
      dataclasses.replace(card, task=task.to_json()).write(workdir)
      tasks.save_fitted(task, workdir)
    test_split = config.data.test_split
    features, fields = cache[test_split]
    report = evaluate_lib.write_split_report(
        task, task.targets(fields), _probabilities(task, head, params, features), workdir,
        test_split, raw_probs=_probabilities(task.uncalibrated(), head, params, features))
    scalars = evaluate_lib.publish(writer, task, report, test_split, schedule.total_steps,
                                   workdir)
    log.info("%s: %s", test_split, ", ".join(f"{k}={v:.4f}" for k, v in scalars.items()))
    return report
  finally:
    checkpoints.close()
    writer.close()


def _refuse_stale_checkpoints(workdir: pathlib.Path, checkpoints: checkpoint_lib.Checkpoints,
                              fingerprints: dict[str, str]) -> None:
  path = workdir / FEATURES_DIR / PROBE_FINGERPRINT
  if checkpoints.latest_step() is not None and path.exists():
    if json.loads(path.read_text()) != fingerprints:
      raise ConfigError(
          f"{workdir} holds a linear probe trained on other features (the data or "
          "model.init_from changed); use a new --workdir")


def _write_fingerprints(workdir: pathlib.Path, fingerprints: dict[str, str]) -> None:
  path = workdir / FEATURES_DIR / PROBE_FINGERPRINT
  path.parent.mkdir(parents=True, exist_ok=True)
  write_text_atomically(path, json.dumps(fingerprints, indent=2))


def _train_head(config, model, task, cache, checkpoints, workdir, train_records, spec, writer):
  train_features, train_fields = cache[config.data.train_split]
  val_features, val_fields = cache[config.data.val_split]
  schedule = Schedule.from_config(config.train, len(train_features))
  batch_size = min(config.train.batch_size, len(train_features))
  lr_schedule = optim.make_schedule(config.optim, total_steps=schedule.total_steps,
                                    steps_per_epoch=schedule.steps_per_epoch)
  tx = optim.make_optimizer(config.optim, lr_schedule)
  loss_fn = task.loss(config.train, train_records)
  head = Head(model.head)
  params = head.params
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, features, fields):
    def objective(p):
      logits = head(p, features)
      value = loss_fn(logits, fields, head.as_model(p))
      value, extra = value if isinstance(value, tuple) else (value, {})
      return value, (logits, extra)
    (loss, (logits, extra)), grads = jax.value_and_grad(objective, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    metrics = {"train/loss": loss, **task.train_metrics(logits, fields), **extra}
    return optax.apply_updates(params, updates), opt_state, metrics

  # The saved optimizer item only records the step: a re-run retrains the head from the cache.
  optimizer_state = nnx.state(nnx.Optimizer(model, optax.set_to_zero(), wrt=nnx.Param))
  data_iterator = pipeline.train_iterator(train_records, config.data, spec,
                                          batch_size=batch_size, seed=config.seed)
  rng = np.random.default_rng(config.seed)
  order, position, pending = rng.permutation(len(train_features)), 0, []
  best = (None, params)
  for global_step in range(1, schedule.total_steps + 1):
    if position + batch_size > len(order):
      order, position = rng.permutation(len(train_features)), 0
    chosen = order[position:position + batch_size]
    position += batch_size
    params, opt_state, metrics = step(params, opt_state, train_features[chosen],
                                      {key: value[chosen] for key, value in train_fields.items()})
    pending.append(metrics)
    if not schedule.is_log_step(global_step):
      continue
    scalars = mean_metrics(pending)
    pending = []
    scalars["lr"] = float(lr_schedule(global_step - 1))
    scalars["epoch"] = global_step / schedule.steps_per_epoch
    if schedule.is_eval_step(global_step):
      report = evaluate_lib.write_split_report(
          task, task.targets(val_fields), _probabilities(task, head, params, val_features),
          workdir, config.data.val_split)
      scalars.update(task.scalars(report, "val"))
      best = _better(best, scalars.get(checkpoints.best_metric), params,
                     checkpoints.higher_is_better)
    writer.write_scalars(global_step, scalars)
    log.info("probe step %d/%d: %s", global_step, schedule.total_steps,
             ", ".join(f"{k}={v:.4g}" for k, v in scalars.items()))
    if schedule.is_checkpoint_step(global_step):
      model_state = nnx.state(model)
      nnx.replace_by_pure_dict(model_state, {"head": jax.device_get(params)})
      checkpoints.save(global_step, TrainState(model_state, optimizer_state), data_iterator,
                       metrics=scalars)
  return head, best[1], schedule


def _better(best, score, params, higher_is_better: bool):
  if score is None:
    return best
  if best[0] is None or (score > best[0] if higher_is_better else score < best[0]):
    return score, params
  return best
