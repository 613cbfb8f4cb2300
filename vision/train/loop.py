"""The training loop: `train(config, workdir)`, readable top to bottom.

    report = train(config, "runs/fashion_mnist")    # resumes if the workdir has checkpoints
    report["accuracy"]                              # test accuracy of the best checkpoint

One run: validate the config, open the data, choose the task (vision.tasks:
what the model predicts, its loss, metrics and report), build the model and
optimizer, compile the sharded steps, restore the latest checkpoint if any,
then train, logging every `log_every_steps`, evaluating on the validation split
and saving a checkpoint every `eval_every_steps` (default: each epoch), and
finally fit the temperature on validation and evaluate the best checkpoint on
the test split. Nothing here depends on the kind of task.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib

from flax import nnx
import grain
import jax
import ml_collections
import optax

from vision import checkpoint as checkpoint_lib
from vision import config as config_lib
from vision import parallel, tasks
from vision.checkpoint import TrainState
from vision.compress import prune
from vision.data import augment, open_from_config, pipeline
from vision.data.sources import Dataset, RecordSource
from vision.evaluate import evaluate as evaluate_lib
from vision.evaluate.inference import predict_split
from vision.train import distill, early_stopping, optim, resume, transfer
from vision.train.build import build_model
from vision.train.metrics import create_writer, mean_metrics
from vision.train.progress import Progress
from vision.train.schedule import Schedule
from vision.train.step import Steps

log = logging.getLogger("vision")


class TrainingDiverged(RuntimeError):
  """The loss became NaN or Inf; the message says where and what to change."""


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
  task: object  # vision.tasks: classification, multi_label, multi_task
  # The teacher of a distillation run (config.distill.teachers), else None.
  distiller: distill.Distiller | None = None
  dataset: Dataset | None = None  # every split, for the resume's split fingerprints


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
  task = tasks.from_config(config, dataset)
  model, card = build_model(config, task, spec)
  card = dataclasses.replace(card, best_metric=task.best_metric(config.train, train_records))
  loss = task.loss(config.train, train_records)
  lr_schedule = optim.make_schedule(config.optim, total_steps=schedule.total_steps,
                                    steps_per_epoch=schedule.steps_per_epoch)
  tx = transfer.make_optimizer(config, model, lr_schedule,
                               steps_per_epoch=schedule.steps_per_epoch)
  tx = prune.wrap_optimizer(config.prune, model, tx, total_steps=schedule.total_steps,
                            model_name=config.model.name)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  mesh = parallel.make_mesh()
  batch_transform = augment.device_transform(config.data, task.dense_targets)
  distiller, loss, batch_transform = distill.setup(config, card, mesh, loss, batch_transform)
  steps = transfer.make_steps(
      config, model, optimizer, mesh, steps_per_epoch=schedule.steps_per_epoch, task=task,
      loss=loss, batch_transform=batch_transform)
  train_iter = pipeline.train_iterator(
      train_records, config.data, spec,
      batch_size=config.train.batch_size // jax.process_count(), seed=config.seed)
  checkpoints = checkpoint_lib.Checkpoints(
      workdir, keep=config.train.keep_checkpoints, best_metric=card.best_metric)
  return Run(config, workdir, schedule, spec, card, val_records, mesh, steps, lr_schedule,
             train_iter, checkpoints, task, distiller, dataset)


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
          dataset: Dataset | None = None, final_test: bool = True) -> dict:
  """Trains (or resumes) the run in `workdir`; returns the test report (or `{}` without one).

  `dataset` overrides the splits of `config.data.source` (a cross-validation fold).
  `transfer.mode='linear_probe'` trains the head through the frozen backbone here;
  `vision.train.trainer.train` sends it to the cached-feature probe instead.
  """
  config = config_lib.validate(config)
  workdir = pathlib.Path(workdir)
  run = assemble(config, workdir, dataset)
  # Nothing in the workdir is written before it is known to fit this config.
  state, start_step = resume.restore_latest(config, workdir, run.checkpoints, run.steps.state,
                                            run.train_iter, run.dataset)
  resume.record_run(config, workdir, run.card, run.dataset, start_step)
  if start_step:
    log.info("resumed from step %d of %d", start_step, run.schedule.total_steps)
  writer = create_writer(config, workdir, start_step)
  stopper = early_stopping.EarlyStopping.resume(config.train, run.checkpoints, workdir, start_step)
  try:
    if not stopper.stopped:
      _train_steps(run, state, start_step, writer, stopper)
    stopper.finish(workdir)
    run.checkpoints.close()
    return _final_test(run, writer) if final_test else {}
  finally:
    run.checkpoints.close()
    writer.close()


def _train_steps(run: Run, state: TrainState, start_step: int, writer,
                 stopper: early_stopping.EarlyStopping) -> TrainState:
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
    scalars = mean_metrics(pending)
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
    if stopper.update(step, scalars):
      break
  return state


def _validate(run: Run, state: TrainState) -> dict[str, float]:
  """Scores `state` on the validation split; writes eval/val/ and returns its scalars."""
  batch_size = evaluate_lib.eval_batch_size(run.config.train.eval_batch_size)
  targets, probs = predict_split(
      lambda batch: run.steps.predict(state, batch), run.val_records, run.spec,
      batch_size=batch_size, mesh=run.mesh, worker_count=run.config.data.worker_count,
      targets=run.task.targets)
  report = evaluate_lib.write_split_report(
      run.task, targets, probs, run.workdir, run.config.data.val_split)
  scalars = run.task.scalars(report, "val")
  if run.distiller is not None:
    scalars.update(run.distiller.val_scalars(
        targets, probs, run.val_records, run.spec, batch_size=batch_size,
        worker_count=run.config.data.worker_count))
  return scalars


def _final_test(run: Run, writer) -> dict:
  """Fits the softmax temperature on validation, then evaluates the best checkpoint on the test
  split with `experiments.evaluate`'s code."""
  split = run.config.data.test_split
  report = evaluate_lib.evaluate_workdir(run.workdir, split, fit_temperature=True)
  scalars = evaluate_lib.publish(writer, run.task, report, split, run.schedule.total_steps,
                                 run.workdir)
  if run.distiller is not None:
    run.distiller.publish_test(writer, run.workdir, split, run.schedule.total_steps)
  log.info("%s: %s", split, ", ".join(f"{k}={v:.4f}" for k, v in scalars.items()))
  return report
