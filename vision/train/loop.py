"""The training loop: `train(config, workdir)`, readable top to bottom.

    report = train(config, "runs/fashion_mnist")    # resumes if the workdir has checkpoints
    report["accuracy"]                              # test accuracy of the best checkpoint

One run: validate the config, open the data, build the model and optimizer,
compile the sharded steps, restore the latest checkpoint if any, then train,
logging every `log_every_steps`, evaluating on the validation split and saving
a checkpoint every `eval_every_steps` (default: each epoch), and finally
evaluate the best checkpoint on the test split.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pathlib

from flax import nnx
import grain
import jax
import ml_collections
import numpy as np
import optax

from vision import checkpoint as checkpoint_lib
from vision import config as config_lib
from vision.config import ConfigError
from vision import logging as logging_lib
from vision import parallel
from vision.data import open_from_config
from vision.data import augment, pipeline
from vision.data.sources import Dataset, RecordSource, record_labels
from vision.evaluate import evaluate as evaluate_lib
from vision.evaluate.inference import predict_split
from vision.models import ModelOptions, create_model
from vision.train import distill, imbalance, multilabel, optim, transfer
from vision.train.progress import Progress
from vision.train.step import Steps, TrainState

log = logging.getLogger("vision")


class TrainingDiverged(RuntimeError):
  """The loss became NaN or Inf; the message says where and what to change."""


@dataclasses.dataclass(frozen=True)
class Schedule:
  """When things happen, in steps."""
  total_steps: int
  steps_per_epoch: int
  log_every: int
  eval_every: int
  checkpoint_every: int | None

  @classmethod
  def from_config(cls, train_config, num_train_examples: int) -> "Schedule":
    steps_per_epoch = pipeline.steps_per_epoch(num_train_examples, train_config.batch_size)
    total = train_config.num_steps or max(1, math.ceil(train_config.epochs * steps_per_epoch))
    return cls(total, steps_per_epoch, min(train_config.log_every_steps, total),
               train_config.eval_every_steps or steps_per_epoch,
               train_config.checkpoint_every_steps)

  def is_eval_step(self, step: int) -> bool:
    return step % self.eval_every == 0 or step == self.total_steps

  def is_log_step(self, step: int) -> bool:
    return step % self.log_every == 0 or self.is_checkpoint_step(step)

  def is_checkpoint_step(self, step: int) -> bool:
    return self.is_eval_step(step) or bool(
        self.checkpoint_every and step % self.checkpoint_every == 0)


def build_model(config: ml_collections.ConfigDict, dataset: Dataset,
                spec: pipeline.ImageSpec) -> tuple[nnx.Module, checkpoint_lib.ModelCard]:
  num_classes = config.model.num_classes or len(dataset.class_names)
  if num_classes < len(dataset.class_names):
    raise ConfigError(
        f"config key 'model.num_classes'={num_classes} is below the data's "
        f"{len(dataset.class_names)} classes")
  class_names = dataset.class_names + tuple(
      str(i) for i in range(len(dataset.class_names), num_classes))
  options = ModelOptions(
      num_classes=num_classes, in_channels=spec.channels, image_size=spec.size,
      dtype=config.model.dtype, dropout=config.model.dropout, drop_path=config.model.drop_path,
      widths=tuple(config.model.widths), hidden=config.model.hidden, stem=config.model.stem,
      conv_impl=config.model.conv_impl)
  model = create_model(config.model.name, options, rngs=nnx.Rngs(config.seed))
  transfer.maybe_load_pretrained(config, model)
  model_options = {k: v for k, v in dataclasses.asdict(options).items()
                   if k not in ("num_classes", "in_channels", "image_size", "conv_impl")}
  card = checkpoint_lib.ModelCard(
      arch=config.model.name, num_classes=num_classes, class_names=class_names,
      image_size=spec.size, channels=spec.channels, mean=spec.mean, std=spec.std,
      model_options=model_options, best_metric=config.train.best_metric)
  return model, card


def _mean_metrics(pending: list[dict]) -> dict[str, float]:
  fetched = jax.device_get(pending)
  return {key: float(np.mean([m[key] for m in fetched])) for key in fetched[0]}


def _check_finite(metrics: dict[str, float], step: int, last_checkpoint: int | None) -> None:
  if metrics.pop("nonfinite") > 0:
    kept = (f"the last good checkpoint (step {last_checkpoint}) is intact"
            if last_checkpoint is not None else "no checkpoint was saved yet")
    raise TrainingDiverged(
        f"loss became NaN/Inf before step {step}; {kept}. Lower optim.learning_rate, "
        "set optim.grad_clip_norm or add warm-up (optim.warmup_epochs)")


@dataclasses.dataclass
class Run:
  """Everything one training run is assembled from."""
  config: ml_collections.ConfigDict
  workdir: pathlib.Path
  schedule: Schedule
  spec: pipeline.ImageSpec
  card: checkpoint_lib.ModelCard
  val_records: RecordSource
  mesh: jax.sharding.Mesh
  steps: Steps
  lr_schedule: optax.Schedule
  train_iter: grain.DatasetIterator
  checkpoints: checkpoint_lib.Checkpoints
  test_records: RecordSource | None = None  # multi-label runs score the test split themselves
  multi_label: bool = False
  # The teacher of a distillation run (config.distill.teachers), else None.
  distiller: distill.Distiller | None = None


def assemble(config: ml_collections.ConfigDict, workdir: pathlib.Path,
             dataset: Dataset | None = None) -> Run:
  """Data, model, optimizer, compiled steps and checkpoints for a validated config.

  `dataset` replaces the config's source (cross-validation folds); the spec still follows the config.
  """
  opened, spec = open_from_config(config.data)
  dataset = dataset or opened
  train_records = pipeline.limit_examples(
      dataset.split(config.data.train_split), config.data.max_train_examples)
  val_records = pipeline.limit_examples(
      dataset.split(config.data.val_split), config.data.max_eval_examples)
  schedule = Schedule.from_config(config.train, len(train_records))
  model, card = build_model(config, dataset, spec)
  counts = imbalance.class_counts(record_labels(train_records), card.num_classes)
  card = dataclasses.replace(card, best_metric=imbalance.best_metric(config.train, counts))
  loss = imbalance.make_loss(config.train, counts)
  if dataset.multi_label:
    card = dataclasses.replace(card, best_metric=multilabel.best_metric(config.train))
    loss = multilabel.bce_loss(config.train.label_smoothing)
  lr_schedule = optim.make_schedule(config.optim, total_steps=schedule.total_steps,
                                    steps_per_epoch=schedule.steps_per_epoch)
  tx = transfer.make_optimizer(config, model, lr_schedule,
                               steps_per_epoch=schedule.steps_per_epoch)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  mesh = parallel.make_mesh()
  batch_transform = augment.device_transform(config.data, card.num_classes)
  distiller, loss, batch_transform = distill.setup(config, card, mesh, loss, batch_transform)
  steps = transfer.make_steps(
      config, model, optimizer, mesh, steps_per_epoch=schedule.steps_per_epoch, loss=loss,
      batch_transform=batch_transform)
  train_iter = pipeline.train_iterator(
      train_records, config.data, spec,
      batch_size=config.train.batch_size // jax.process_count(), seed=config.seed)
  checkpoints = checkpoint_lib.Checkpoints(
      workdir, keep=config.train.keep_checkpoints, best_metric=card.best_metric)
  test_records = None
  if dataset.multi_label and config.data.test_split in dataset.splits:
    test_records = pipeline.limit_examples(
        dataset.split(config.data.test_split), config.data.max_eval_examples)
  return Run(config, workdir, schedule, spec, card, val_records, mesh, steps, lr_schedule,
             train_iter, checkpoints, test_records, dataset.multi_label, distiller)


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
          dataset: Dataset | None = None, final_test: bool = True) -> dict:
  """Trains (or resumes) the run in `workdir`; returns the test report (or `{}` without one).

  `dataset` overrides the splits of `config.data.source` (a cross-validation fold).
  """
  config = config_lib.validate(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  if parallel.is_main_process():
    changed = config_lib.save_resolved(config, workdir)
    if changed:
      log.warning("config differs from the earlier run in this workdir: %s", ", ".join(changed))
  if config.transfer.mode == "linear_probe":
    from vision.train import probe  # pylint: disable=import-outside-toplevel  (probe imports loop)
    return probe.train_probe(config, workdir)

  run = assemble(config, workdir, dataset)
  if parallel.is_main_process():
    run.card.write(workdir)
  state, start_step = run.steps.state, run.checkpoints.latest_step() or 0
  if start_step:
    state = run.checkpoints.restore(start_step, state, run.train_iter)
    log.info("resumed from step %d of %d", start_step, run.schedule.total_steps)
  writer = _create_writer(config, workdir, start_step)
  try:
    _train_steps(run, state, start_step, writer)
    run.checkpoints.close()
    return _final_test(run, writer) if final_test else {}
  finally:
    run.checkpoints.close()
    writer.close()


def _create_writer(config: ml_collections.ConfigDict, workdir: pathlib.Path, start_step: int):
  wandb_run = None
  if parallel.is_main_process():
    wandb_run = logging_lib.init_wandb(
        config.to_dict(), workdir, project=config.wandb.project, entity=config.wandb.entity,
        name=config.wandb.name, group=config.wandb.group, mode=config.wandb.mode)
  return logging_lib.create_metric_writer(
      workdir, run=wandb_run, resume_step=start_step, is_main_process=parallel.is_main_process())


def _train_steps(run: Run, state: TrainState, start_step: int, writer) -> TrainState:
  schedule, config = run.schedule, run.config
  rng = parallel.replicate(jax.random.key(config.seed), run.mesh)
  block_each_step = parallel.must_block_each_step()
  progress = Progress(schedule.total_steps, start_step)
  pending: list[dict] = []
  last_checkpoint = start_step or None
  for step in range(start_step + 1, schedule.total_steps + 1):
    batch = parallel.to_global(next(run.train_iter), run.mesh)
    state, metrics = run.steps.train(state, batch, rng)
    if block_each_step:
      jax.block_until_ready(metrics)
    pending.append(metrics)
    if not schedule.is_log_step(step):
      continue
    scalars = _mean_metrics(pending)
    pending = []
    _check_finite(scalars, step, last_checkpoint)
    scalars["lr"] = float(run.lr_schedule(step - 1))
    scalars["epoch"] = step / schedule.steps_per_epoch
    scalars["steps_per_sec"] = progress.update(step)
    if schedule.is_eval_step(step):
      with progress.paused():
        scalars.update(_validate(run, state))
    writer.write_scalars(step, scalars)
    log.info("%s", progress.line(step, scalars))
    if schedule.is_checkpoint_step(step):
      with progress.paused():
        run.checkpoints.save(step, state, run.train_iter, metrics=scalars)
        last_checkpoint = step
  return state


def _validate(run: Run, state: TrainState) -> dict[str, float]:
  """Scores `state` on the validation split; writes eval/val/ and returns its scalars."""
  if run.multi_label:
    return _validate_multi_label(run, state)
  labels, probs = predict_split(
      lambda batch: run.steps.predict(state, batch), run.val_records, run.spec,
      batch_size=evaluate_lib.eval_batch_size(run.config.train.eval_batch_size), mesh=run.mesh,
      worker_count=run.config.data.worker_count)
  report = evaluate_lib.write_split_report(
      labels, probs, run.card.class_names, run.workdir, run.config.data.val_split)
  scalars = evaluate_lib.split_scalars(report, "val")
  if run.distiller is not None:
    scalars.update(run.distiller.val_scalars(
        labels, probs, run.val_records, run.spec,
        batch_size=evaluate_lib.eval_batch_size(run.config.train.eval_batch_size),
        worker_count=run.config.data.worker_count))
  return scalars


def _validate_multi_label(run: Run, state: TrainState) -> dict[str, float]:
  targets, probs = multilabel.predict_multi_hot(
      lambda batch: run.steps.logits(state, batch), run.val_records, run.spec, mesh=run.mesh,
      batch_size=evaluate_lib.eval_batch_size(run.config.train.eval_batch_size))
  report = multilabel.multilabel_report(targets, probs, np.full(targets.shape[1], 0.5),
                                        run.card.class_names)
  multilabel.write_report(report, run.workdir, run.config.data.val_split)
  return multilabel.split_scalars(report, "val")


def _final_test(run: Run, writer) -> dict:
  """Evaluates the best checkpoint on the test split, as `experiments.evaluate` would."""
  split = run.config.data.test_split
  if run.multi_label:
    report = multilabel.final_report(
        run.workdir, run.val_records, run.test_records, run.spec, test_split=split,
        batch_size=evaluate_lib.eval_batch_size(run.config.train.eval_batch_size))
    scalars = multilabel.split_scalars(report, split)
    writer.write_scalars(run.schedule.total_steps, scalars)
    writer.write_summary(scalars)
    log.info("%s: %s", split, ", ".join(f"{k}={v:.4f}" for k, v in scalars.items()))
    return report
  report = evaluate_lib.evaluate_workdir(run.workdir, split)
  evaluate_lib.publish(writer, report, split, run.schedule.total_steps, run.workdir)
  if run.distiller is not None:
    run.distiller.publish_test(writer, run.workdir, split, run.schedule.total_steps)
  scalars = evaluate_lib.split_scalars(report, split)
  log.info("%s: %s", split, ", ".join(f"{k}={v:.4f}" for k, v in scalars.items()))
  return report
