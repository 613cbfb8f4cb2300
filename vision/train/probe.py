"""Linear probe: a frozen backbone's features computed once, cached, and a new head trained on them.

    python -m experiments.train --config=configs/NAME.py --workdir=runs/probe \
        --config.transfer.mode=linear_probe --config.model.init_from=runs/imagenet_mobilenet_v2

    report = train_probe(config, workdir)       # what `loop.train` calls for mode linear_probe

`model.features` (eval mode, batched, through the mesh) runs once per split;
the result lands in `WORKDIR/features/{split}.npz` with a fingerprint of the
backbone's parameters and of the data (config, files, example count), so a
cache is reused only when both match. The head then trains on the cached
features with the config's optimizer, schedule, batch size and epochs, the
validation split scored at each eval step. The workdir is an ordinary model
directory: checkpoints of the full model (backbone + head, best one by the
validation metric), model_card.json, eval/{val,test}/ reports, metrics.jsonl
and W&B. Re-running retrains the head from the cache (deterministic); a
workdir whose checkpoints came from other features is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vision import checkpoint as checkpoint_lib
from vision import config as config_lib
from vision import parallel
from vision.config import ConfigError
from vision.data import open_from_config, pipeline
from vision.data.sources import RecordSource
from vision.evaluate import evaluate as evaluate_lib
from vision.evaluate.inference import predict_split
from vision.files import write_atomically, write_text_atomically
from vision.train import losses, loop, optim
from vision.train.step import TrainState
from vision.train.transfer import _flat, _is_head

log = logging.getLogger("vision")

FEATURES_DIR = "features"
PROBE_FINGERPRINT = "probe_fingerprint.json"


# ------------------------------------------------------------------ fingerprints

def backbone_fingerprint(model: nnx.Module) -> str:
  """sha256 of every parameter and statistic outside the head (what the features depend on)."""
  digest = hashlib.sha256()
  for name, value in sorted(_flat(checkpoint_lib._without_rng(nnx.state(model))).items()):
    if _is_head(name):
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


def cached_features(workdir: str | os.PathLike, split: str, records: RecordSource,
                    spec: pipeline.ImageSpec, *, features_fn, fingerprint: str, batch_size: int,
                    mesh: jax.sharding.Mesh, worker_count: int = 0
                    ) -> tuple[np.ndarray, np.ndarray, bool]:
  """(features [N, D], labels [N], reused) for a split, from the cache when it is current."""
  path = pathlib.Path(workdir) / FEATURES_DIR / f"{split}.npz"
  if path.exists():
    with np.load(path) as cached:
      if str(cached["fingerprint"]) == fingerprint:
        log.info("features/%s: reused the cache (%d examples)", split, len(cached["labels"]))
        return cached["features"], cached["labels"], True
    log.info("features/%s: cache is stale (backbone or data changed); recomputing", split)
  labels, features = predict_split(features_fn, records, spec, batch_size=batch_size,
                                   mesh=mesh, worker_count=worker_count)
  if parallel.is_main_process():
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: pathlib.Path) -> None:
      with open(tmp, "wb") as file:
        np.savez(file, features=features, labels=labels, fingerprint=np.array(fingerprint))

    write_atomically(path, write)
  log.info("features/%s: computed %d × %d", split, *features.shape)
  return features, labels, False


# ------------------------------------------------------------------ head training

class Head:
  """The model's head as a pure function of its parameters."""

  def __init__(self, module: nnx.Module):
    self.graphdef, self.template = nnx.split(module)
    self.params = nnx.to_pure_dict(self.template)

  def __call__(self, params, features: jax.Array) -> jax.Array:
    state = jax.tree.map(lambda x: x, self.template)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(self.graphdef, state)(features).astype(jnp.float32)


def _probabilities(head: Head, params, features: np.ndarray) -> np.ndarray:
  return np.asarray(jax.jit(lambda p, x: jax.nn.softmax(head(p, x)))(params, features))


def train_probe(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
  """Trains the head of `model.init_from`'s backbone on cached features; returns the test report."""
  dataset, spec = open_from_config(config.data)
  splits = {
      config.data.train_split: pipeline.limit_examples(
          dataset.split(config.data.train_split), config.data.max_train_examples),
      config.data.val_split: pipeline.limit_examples(
          dataset.split(config.data.val_split), config.data.max_eval_examples),
      config.data.test_split: pipeline.limit_examples(
          dataset.split(config.data.test_split), config.data.max_eval_examples)}
  model, card = loop.build_model(config, dataset, spec)
  backbone = backbone_fingerprint(model)
  fingerprints = {split: hashlib.sha256(
      (backbone + data_fingerprint(config.data, split, records)).encode()).hexdigest()
                  for split, records in splits.items()}
  checkpoints = checkpoint_lib.Checkpoints(
      workdir, keep=config.train.keep_checkpoints, best_metric=config.train.best_metric)
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
    features, labels, _ = cached_features(
        workdir, split, records, spec, features_fn=features_fn,
        fingerprint=fingerprints[split], mesh=mesh, worker_count=config.data.worker_count,
        batch_size=evaluate_lib.eval_batch_size(config.train.eval_batch_size))
    cache[split] = (features, labels)
  writer = loop._create_writer(config, workdir, 0)
  try:
    head, params, schedule = _train_head(config, model, card, cache, checkpoints, workdir,
                                         splits[config.data.train_split], spec, writer)
    test_split = config.data.test_split
    features, labels = cache[test_split]
    report = evaluate_lib.write_split_report(
        labels, _probabilities(head, params, features), card.class_names, workdir, test_split)
    evaluate_lib.publish(writer, report, test_split, schedule.total_steps, workdir)
    scalars = evaluate_lib.split_scalars(report, test_split)
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


def _train_head(config, model, card, cache, checkpoints, workdir, train_records, spec, writer):
  train_features, train_labels = cache[config.data.train_split]
  val_features, val_labels = cache[config.data.val_split]
  schedule = loop.Schedule.from_config(config.train, len(train_labels))
  batch_size = min(config.train.batch_size, len(train_labels))
  lr_schedule = optim.make_schedule(config.optim, total_steps=schedule.total_steps,
                                    steps_per_epoch=schedule.steps_per_epoch)
  tx = optim.make_optimizer(config.optim, lr_schedule)
  loss_fn = losses.classification_loss(config.train.label_smoothing)
  head = Head(model.head)
  params = head.params
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, features, labels):
    def objective(p):
      logits = head(p, features)
      return loss_fn(logits, {"label": labels}), logits
    (loss, logits), grads = jax.value_and_grad(objective, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    accuracy = (logits.argmax(-1) == labels).mean()
    return optax.apply_updates(params, updates), opt_state, {"train/loss": loss,
                                                              "train/accuracy": accuracy}

  # The saved optimizer item only records the step: a re-run retrains the head from the cache.
  optimizer_state = nnx.state(nnx.Optimizer(model, optax.set_to_zero(), wrt=nnx.Param))
  data_iterator = pipeline.train_iterator(train_records, config.data, spec,
                                          batch_size=batch_size, seed=config.seed)
  rng = np.random.default_rng(config.seed)
  order, position, pending = rng.permutation(len(train_labels)), 0, []
  best = (None, params)
  for global_step in range(1, schedule.total_steps + 1):
    if position + batch_size > len(order):
      order, position = rng.permutation(len(train_labels)), 0
    chosen = order[position:position + batch_size]
    position += batch_size
    params, opt_state, metrics = step(params, opt_state, train_features[chosen],
                                      train_labels[chosen])
    pending.append(metrics)
    if not schedule.is_log_step(global_step):
      continue
    scalars = loop._mean_metrics(pending)
    pending = []
    scalars["lr"] = float(lr_schedule(global_step - 1))
    scalars["epoch"] = global_step / schedule.steps_per_epoch
    if schedule.is_eval_step(global_step):
      report = evaluate_lib.write_split_report(
          val_labels, _probabilities(head, params, val_features), card.class_names, workdir,
          config.data.val_split)
      scalars.update(evaluate_lib.split_scalars(report, "val"))
      best = _better(best, scalars.get(config.train.best_metric), params,
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
