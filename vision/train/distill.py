"""Knowledge distillation: a teacher (one model directory or an ensemble) trains the student.

    config.distill.teachers = ("runs/teacher",)        # several: their mean probabilities
    config.distill.temperature = 4.0
    config.distill.hard_label_weight = 0.0             # loss = (1-w)·T²·KL + w·CE
    config.distill.variant = "alone"                   # the baseline: same run, no teacher loss

    distiller, loss, batch_transform = setup(config, card, mesh, loss, batch_transform)

The training loop calls `setup` once. With `distill.teachers` set, the
`Distiller`'s `batch_transform` runs the teacher on device, inside the compiled
train step, on exactly the (augmented, mixed) batch the student gets: the
"consistent" teaching and "function matching" of Beyer et al. 2022, "Knowledge
distillation: a good teacher is patient and consistent" (big_vision's
`trainers/proj/distill/distill.py`); "patient" is a long schedule. The
teacher's parameters are closed over by the step, never part of the training
state, so they are not stored in the student's checkpoints.

`distill.variant = "alone"` keeps the teacher for measurement only: the
student trains on the labels with the run's own loss and augmentation, and
its agreement with the teacher is still logged, so one config and one sweep
key (`configs/distill_fashion_mnist.py:compare`) give both arms of the
comparison.

Logged: `train/kl`, `train/teacher_accuracy` and `train/agreement` (argmax of
student == argmax of teacher) every log step (distilled runs), and
`val/teacher_accuracy`, `val/agreement` at each validation and
`test/teacher_accuracy`, `test/agreement` after the final test (both variants).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vision import config as config_lib
from vision import parallel
from vision.checkpoint import ModelCard
from vision.config import ConfigError
from vision.data import open_from_config
from vision.data.pipeline import ImageSpec, limit_examples
from vision.data.sources import RecordSource
from vision.evaluate.ensemble import load_members
from vision.evaluate.evaluate import card_spec, eval_batch_size, predict_workdir
from vision.evaluate.inference import predict_split
from vision.train import losses

TEACHER_PROBS = "teacher_probs"
Batch = dict[str, jax.Array]
BatchTransform = Callable[[Batch, jax.Array], Batch]


def kl_divergence(student_logits: jax.Array, teacher_probs: jax.Array,
                  temperature: float) -> jax.Array:
  """T² · KL(teacher ‖ softmax(student / T)), averaged over the batch.

  `teacher_probs` are already softened at `temperature`; the T² factor keeps
  the gradient scale independent of T (Hinton et al., 2015).
  """
  log_student = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature)
  teacher_probs = teacher_probs.astype(jnp.float32)
  log_teacher = jnp.log(jnp.clip(teacher_probs, 1e-12, 1.0))
  per_example = jnp.sum(teacher_probs * (log_teacher - log_student), axis=-1)
  return temperature ** 2 * per_example.mean()


def distillation_loss(temperature: float, hard_label_weight: float = 0.0,
                      label_loss: Optional[losses.LossFn] = None) -> losses.LossFn:
  """(1-w)·T²·KL(teacher ‖ student) + w·label_loss, plus teacher/agreement metrics.

  `label_loss` is the run's own objective (cross-entropy with its label smoothing,
  class weights, and mixed soft targets under mixup/cutmix); default plain CE.
  """
  label_loss = label_loss or losses.classification_loss()

  def loss(logits: jax.Array, batch: Batch, model=None):
    teacher_probs = batch[TEACHER_PROBS]
    kl = kl_divergence(logits, teacher_probs, temperature)
    value, metrics = (1.0 - hard_label_weight) * kl, {}
    if hard_label_weight:
      label_value = label_loss(logits, batch, model)
      label_value, metrics = label_value if isinstance(label_value, tuple) else (label_value, {})
      value = value + hard_label_weight * label_value
    teacher_labels = teacher_probs.argmax(-1)
    metrics = {
        **metrics,
        "train/kl": kl,
        "train/teacher_accuracy": (teacher_labels == batch["label"]).mean(),
        "train/agreement": (teacher_labels == logits.argmax(-1)).mean(),
    }
    return value, metrics
  return loss


def _check_teacher(card: ModelCard, student: ModelCard, workdir: str) -> None:
  for who, task in ((workdir, card.task), ("the student", student.task)):
    if (task or {}).get("name", "classification") != "classification":
      raise ConfigError(f"config key 'distill.teachers': distillation matches softmax outputs, "
                        f"but {who} is a {task['name']} model (task.name='classification' only)")
  if card.class_names != student.class_names:
    raise ConfigError(
        f"config key 'distill.teachers': {workdir} predicts {list(card.class_names)}, "
        f"the student {list(student.class_names)}")
  for field in ("image_size", "channels", "mean", "std"):
    if getattr(card, field) != getattr(student, field):
      raise ConfigError(
          f"config key 'distill.teachers': {workdir} takes {field}={getattr(card, field)}, "
          f"the student's data gives {getattr(student, field)}: teacher and student must see "
          "the same batch (set data.image_size/channels/mean/std like the teacher's)")


def setup(config: ml_collections.ConfigDict, student: ModelCard, mesh: jax.sharding.Mesh,
          loss: losses.LossFn, batch_transform: Optional[BatchTransform]
          ) -> tuple[Optional["Distiller"], losses.LossFn, Optional[BatchTransform]]:
  """The run's teacher (None without `distill.teachers`), and the loss and batch transform to
  train with: the distillation ones, or the run's own for `distill.variant = 'alone'`."""
  if not config.distill.teachers:
    return None, loss, batch_transform
  distiller = Distiller.create(config.distill, student, mesh)
  if config.distill.variant == "alone":
    return distiller, loss, batch_transform
  return distiller, distiller.loss(loss), distiller.batch_transform(batch_transform)


@dataclasses.dataclass
class Distiller:
  """The teacher (models in eval mode, replicated on the mesh) and what it adds to a run."""
  graphdefs: list
  states: list
  temperature: float
  hard_label_weight: float
  mesh: jax.sharding.Mesh
  # The teacher's probabilities on each evaluated split, by split name.
  _predictions: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

  @classmethod
  def create(cls, config: ml_collections.ConfigDict, student: ModelCard,
             mesh: jax.sharding.Mesh) -> "Distiller":
    """From the run's `distill` config group; checks the teacher fits the student."""
    teachers: Sequence[str] = config.teachers
    if isinstance(teachers, str):
      teachers = (teachers,)
    for workdir in teachers:
      if not os.path.isdir(workdir):
        raise ConfigError(f"config key 'distill.teachers': {workdir!r} is not a directory "
                          "(expected model directories written by experiments.train)")
    members = load_members(teachers)
    for (_, card), workdir in zip(members, teachers):
      _check_teacher(card, student, workdir)
    graphdefs, states = [], []
    for model, _ in members:
      graphdef, state = nnx.split(model)
      graphdefs.append(graphdef)
      states.append(parallel.replicate(state, mesh))
    return cls(graphdefs, states, float(config.temperature), float(config.hard_label_weight),
               mesh)

  def teacher_probs(self, images: jax.Array, temperature: float = 1.0) -> jax.Array:
    """Mean over the teacher's members of softmax(logits / T); traceable."""
    probs = [jax.nn.softmax(nnx.merge(g, s)(images).astype(jnp.float32) / temperature)
             for g, s in zip(self.graphdefs, self.states)]
    return jax.lax.stop_gradient(sum(probs) / len(probs))

  def batch_transform(self, inner: Optional[BatchTransform] = None) -> BatchTransform:
    """Adds the teacher's softened probabilities to the batch, after any other transform."""
    def transform(batch: Batch, rng: jax.Array) -> Batch:
      if inner is not None:
        batch = inner(batch, rng)
      return {**batch, TEACHER_PROBS: self.teacher_probs(batch["image"], self.temperature)}
    return transform

  def loss(self, label_loss: Optional[losses.LossFn] = None) -> losses.LossFn:
    """The distillation objective around the run's own `label_loss` (see distillation_loss)."""
    return distillation_loss(self.temperature, self.hard_label_weight, label_loss)

  def split_scalars(self, split: str, labels: np.ndarray, student_probs: np.ndarray,
                    records: RecordSource, spec: ImageSpec, *, batch_size: int,
                    worker_count: int = 0) -> dict[str, float]:
    """`SPLIT/teacher_accuracy` and `SPLIT/agreement` (same argmax as the student), for
    the student's probabilities [N, C] on `records`; the teacher's are computed once."""
    if split not in self._predictions:
      predict = jax.jit(lambda batch: self.teacher_probs(batch["image"]))
      _, self._predictions[split] = predict_split(
          predict, records, spec, batch_size=batch_size, mesh=self.mesh,
          worker_count=worker_count)
    teacher = self._predictions[split].argmax(-1)
    return {f"{split}/teacher_accuracy": float((teacher == labels).mean()),
            f"{split}/agreement": float((teacher == student_probs.argmax(-1)).mean())}

  def val_scalars(self, labels: np.ndarray, student_probs: np.ndarray, records: RecordSource,
                  spec: ImageSpec, *, batch_size: int, worker_count: int = 0) -> dict[str, float]:
    """`val/teacher_accuracy` and `val/agreement`."""
    return self.split_scalars("val", labels, student_probs, records, spec,
                              batch_size=batch_size, worker_count=worker_count)

  def publish_test(self, writer, workdir: str | os.PathLike, split: str, step: int) -> None:
    """Logs `SPLIT/teacher_accuracy` and `SPLIT/agreement` of the run's best checkpoint (the
    one the test report scores) on `split` of its data, as scalars and to the run summary."""
    labels, student_probs, card = predict_workdir(workdir, split)
    config = config_lib.load_resolved(workdir)
    dataset, _ = open_from_config(config.data)
    records = limit_examples(dataset.split(split), config.data.max_eval_examples)
    scalars = self.split_scalars(
        split, labels, student_probs, records, card_spec(card),
        batch_size=eval_batch_size(config.train.eval_batch_size),
        worker_count=config.data.worker_count)
    writer.write_scalars(step, scalars)
    writer.write_summary(scalars)

