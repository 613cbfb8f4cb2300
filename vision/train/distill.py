"""Knowledge distillation: a teacher (one model directory or an ensemble) trains the student.

    config.distill.teachers = ("runs/teacher",)        # several: their mean probabilities
    config.distill.temperature = 4.0
    config.distill.hard_label_weight = 0.0             # loss = (1-w)·T²·KL + w·CE

The training loop builds a `Distiller` when `distill.teachers` is set. Its
`batch_transform` runs the teacher on device, inside the compiled train step,
on exactly the (augmented) batch the student gets — the "consistent" half of
big_vision's "patient and consistent" recipe; the "patient" half is a long
schedule. The teacher's parameters are closed over by the step, never part of
the training state, so they are not stored in the student's checkpoints.

Logged: `train/kl`, `train/teacher_accuracy` and `train/agreement` (argmax of
student == argmax of teacher) every log step, and `val/teacher_accuracy`,
`val/agreement` at each validation next to the student's `val/accuracy`.
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

from vision import parallel
from vision.checkpoint import ModelCard
from vision.config import ConfigError
from vision.data.pipeline import ImageSpec
from vision.data.sources import RecordSource
from vision.evaluate.ensemble import load_members
from vision.evaluate.inference import predict_split
from vision.train import losses

TEACHER_PROBS = "teacher_probs"
Batch = dict[str, jax.Array]


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
                      label_smoothing: float = 0.0) -> losses.LossFn:
  """(1-w)·T²·KL(teacher ‖ student) + w·CE(labels), plus teacher/agreement metrics."""
  def loss(logits: jax.Array, batch: Batch, model=None):
    del model
    teacher_probs = batch[TEACHER_PROBS]
    kl = kl_divergence(logits, teacher_probs, temperature)
    value = (1.0 - hard_label_weight) * kl
    if hard_label_weight:
      value = value + hard_label_weight * losses.cross_entropy(
          logits, batch["label"], label_smoothing=label_smoothing)
    teacher_labels = teacher_probs.argmax(-1)
    metrics = {
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


@dataclasses.dataclass
class Distiller:
  """The teacher (models in eval mode, replicated on the mesh) and what it adds to a run."""
  graphdefs: list
  states: list
  temperature: float
  hard_label_weight: float
  mesh: jax.sharding.Mesh
  _val_teacher: Optional[np.ndarray] = None

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

  def batch_transform(self, inner: Optional[Callable[[Batch, jax.Array], Batch]] = None):
    """Adds the teacher's softened probabilities to the batch, after any other transform."""
    def transform(batch: Batch, rng: jax.Array) -> Batch:
      if inner is not None:
        batch = inner(batch, rng)
      return {**batch, TEACHER_PROBS: self.teacher_probs(batch["image"], self.temperature)}
    return transform

  def loss(self, label_smoothing: float = 0.0) -> losses.LossFn:
    return distillation_loss(self.temperature, self.hard_label_weight, label_smoothing)

  def val_scalars(self, labels: np.ndarray, student_probs: np.ndarray, records: RecordSource,
                  spec: ImageSpec, *, batch_size: int, worker_count: int = 0) -> dict[str, float]:
    """`val/teacher_accuracy` and `val/agreement`; the teacher's predictions are cached."""
    if self._val_teacher is None:
      predict = jax.jit(lambda batch: self.teacher_probs(batch["image"]))
      _, self._val_teacher = predict_split(predict, records, spec, batch_size=batch_size,
                                           mesh=self.mesh, worker_count=worker_count)
    teacher = self._val_teacher.argmax(-1)
    return {"val/teacher_accuracy": float((teacher == labels).mean()),
            "val/agreement": float((teacher == student_probs.argmax(-1)).mean())}
