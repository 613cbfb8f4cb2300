"""Multi-task learning: several named heads over one backbone, trained together.

    config.task.name = "multi_task"
    config.task.heads = {"class": {"source": "label"},
                         "garment": {"source": "map:configs/fashion_mnist_garment.json"}}
    config.task.weighting = "fixed"          # or "uncertainty" (Kendall et al. 2018)

    task = tasks.from_config(config, dataset)
    task.num_outputs                          # 10 + 5: the model's head is one linear layer
    report = task.report(targets, probs)      # {"tasks": {"class": {...}, "garment": {...}}, ...}

Each head is a single-label `Classification` (or a `MultiLabel`) task over its
own slice of the logits: the model's `head` is one linear layer with every
head's outputs side by side, which is exactly a separate linear head per task
on the shared features, so every model family (and transfer learning, weight
import, export) works unchanged. Heads sit in the order of their names (a
config's keys are sorted); the first is the one the server's prediction log,
feedback and drift monitor follow.

The objective is `sum_h w_h · L_h` with `w_h = loss_weight` (`fixed`), or, with
`uncertainty`, Kendall, Gal & Cipolla 2018 ("Multi-task learning using
uncertainty to weigh losses", eq. 10 for classification):
`sum_h w_h · (exp(-s_h) · L_h + s_h / 2)`, where `s_h = log σ_h²` are learned
with the network (`model.head.log_variance`, one per head, starting at 0).

Metric keys carry the head name last: `train/loss/garment`,
`val/accuracy/class`, `val/macro_f1/garment`; `val/accuracy/mean` (the mean
over heads) picks the best checkpoint unless `train.best_metric` is set.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vision.data.sources import Dataset, RecordSource
from vision.evaluate import report as report_lib
from vision.files import write_text_atomically
from vision.tasks import TASKS, Targets
from vision.tasks.classification import Classification
from vision.tasks.labels import label_source
from vision.tasks.multi_label import MultiLabel
from vision.train.losses import LossFn

HEAD_TYPES = {"classification": Classification, "multi_label": MultiLabel}
MEAN_ACCURACY = "val/accuracy/mean"


@dataclasses.dataclass(frozen=True)
class Head:
  """A named sub-task and where its outputs sit in the model's logits."""
  name: str
  task: Classification | MultiLabel
  start: int
  loss_weight: float = 1.0

  @property
  def outputs(self) -> slice:
    return slice(self.start, self.start + self.task.num_outputs)


def _keyed(metrics: dict, head: str) -> dict:
  """'val/accuracy' → 'val/accuracy/HEAD' (the head name goes last)."""
  return {f"{key}/{head}": value for key, value in metrics.items()}


@dataclasses.dataclass(frozen=True)
class MultiTask:
  """Named heads (in order) over one logits vector; `weighting` 'fixed' or 'uncertainty'."""
  heads: tuple[Head, ...]
  weighting: str = "fixed"
  name = "multi_task"

  # ----------------------------------------------------------------- building
  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, dataset: Dataset) -> "MultiTask":
    specs = []
    for head_name, head in config.task.heads.items():
      key = f"task.heads.{head_name}"
      source = label_source(head.source, dataset, key=f"{key}.source")
      specs.append((head_name, HEAD_TYPES[head.type].for_head(head, dataset, source, key),
                    float(head.loss_weight)))
    return cls.from_heads(specs, config.task.weighting)

  @classmethod
  def from_heads(cls, specs: Sequence[tuple[str, Classification | MultiLabel, float]],
                 weighting: str = "fixed") -> "MultiTask":
    heads, start = [], 0
    for head_name, task, weight in specs:
      heads.append(Head(head_name, task, start, weight))
      start += task.num_outputs
    return cls(tuple(heads), weighting)

  @classmethod
  def from_json(cls, fields: dict, class_names: Sequence[str]) -> "MultiTask":
    del class_names  # each head stores its own
    specs = [(head_name, HEAD_TYPES[head["name"]].from_json(head, ()), float(head["loss_weight"]))
             for head_name, head in fields["heads"].items()]
    return cls.from_heads(specs, fields.get("weighting", "fixed"))

  def to_json(self) -> dict:
    return {"name": self.name, "weighting": self.weighting,
            "heads": {h.name: {**h.task.to_json(), "loss_weight": h.loss_weight}
                      for h in self.heads}}

  @property
  def class_names(self) -> tuple[str, ...]:
    """Every output's name, 'HEAD:CLASS', in logit order."""
    return tuple(f"{h.name}:{c}" for h in self.heads for c in h.task.class_names)

  @property
  def num_outputs(self) -> int:
    return sum(h.task.num_outputs for h in self.heads)

  @property
  def uncertainty_weights(self) -> int:
    """How many learned log-variances the model's head carries (one per head, or none)."""
    return len(self.heads) if self.weighting == "uncertainty" else 0

  # ----------------------------------------------------------------- training
  def loss(self, train_config, train_records: RecordSource) -> LossFn:
    """The weighted sum of the heads' losses; each head's value is also logged."""
    head_losses = [(h, h.task.loss(train_config, train_records)) for h in self.heads]

    def loss(logits: jax.Array, batch: dict, model=None):
      total, metrics = 0.0, {}
      log_variance = model.head.log_variance[...] if self.uncertainty_weights else None
      for index, (head, head_loss) in enumerate(head_losses):
        value = head_loss(logits[:, head.outputs], self._head_batch(batch, head), None)
        value = value[0] if isinstance(value, tuple) else value
        metrics[f"train/loss/{head.name}"] = value
        if log_variance is not None:
          s = log_variance[index]
          value = jnp.exp(-s) * value + 0.5 * s
          metrics[f"train/task_weight/{head.name}"] = jnp.exp(-s)
        total = total + head.loss_weight * value
      return total, metrics
    return loss

  def best_metric(self, train_config, train_records: RecordSource) -> str:
    del train_records
    default = train_config.best_metric == "val/accuracy"
    return MEAN_ACCURACY if default else train_config.best_metric

  @staticmethod
  def _head_batch(batch: dict, head: Head) -> dict:
    """Mixed soft targets (mixup/cutmix) are cut to the head's slice."""
    if "targets" not in batch:
      return batch
    return {**batch, "targets": batch["targets"][:, head.outputs]}

  def train_metrics(self, logits: jax.Array, batch: dict) -> dict[str, jax.Array]:
    metrics = {}
    for head in self.heads:
      metrics.update(_keyed(head.task.train_metrics(logits[:, head.outputs], batch), head.name))
    return metrics

  def dense_targets(self, batch: dict) -> jax.Array:
    return jnp.concatenate([h.task.dense_targets(batch) for h in self.heads], axis=-1)

  # --------------------------------------------------------------- evaluation
  def probabilities(self, logits):
    """Each head's probabilities in its own slice (softmax or sigmoid), [B, num_outputs]."""
    concatenate = np.concatenate if isinstance(logits, np.ndarray) else jnp.concatenate
    return concatenate([h.task.probabilities(logits[..., h.outputs]) for h in self.heads],
                       axis=-1)

  def targets(self, batch: dict) -> dict[str, np.ndarray]:
    return {h.name: h.task.targets(batch) for h in self.heads}

  def fit(self, validation: Callable[[], tuple[Targets, np.ndarray]]) -> "MultiTask":
    """Each head tuned on its slice of `validation()` (computed at most once)."""
    cache = []

    def computed():
      if not cache:
        cache.append(validation())
      return cache[0]

    heads = []
    for head in self.heads:
      fitted = head.task.fit(lambda head=head: (computed()[0][head.name],
                                                computed()[1][:, head.outputs]))
      heads.append(dataclasses.replace(head, task=fitted))
    return dataclasses.replace(self, heads=tuple(heads))

  def fitted_state(self) -> dict | None:
    state = {h.name: h.task.fitted_state() for h in self.heads}
    state = {name: value for name, value in state.items() if value is not None}
    return state or None

  def with_fitted_state(self, state: dict | None) -> "MultiTask":
    state = state or {}
    return dataclasses.replace(self, heads=tuple(
        dataclasses.replace(h, task=h.task.with_fitted_state(state.get(h.name)))
        for h in self.heads))

  def uncalibrated(self) -> "MultiTask":
    """Every head at temperature 1."""
    return dataclasses.replace(self, heads=tuple(
        dataclasses.replace(h, task=h.task.uncalibrated()) for h in self.heads))

  def calibrate(self, targets: dict[str, np.ndarray], logits: np.ndarray) -> "MultiTask":
    """Each classification head's temperature fitted on its slice of the (validation) logits."""
    return dataclasses.replace(self, heads=tuple(
        dataclasses.replace(h, task=h.task.calibrate(targets[h.name], logits[:, h.outputs]))
        for h in self.heads))

  def report(self, targets: dict[str, np.ndarray], probs: np.ndarray,
             raw_probs: np.ndarray | None = None) -> dict:
    """{"num_examples", "accuracy" (mean over heads), "tasks": {head: its own report}}."""
    raw_probs = probs if raw_probs is None else raw_probs
    reports = {h.name: h.task.report(targets[h.name], probs[:, h.outputs],
                                     raw_probs[:, h.outputs]) for h in self.heads}
    first = next(iter(reports.values()))
    return {"num_examples": first["num_examples"],
            "accuracy": float(np.mean([r["accuracy"] for r in reports.values()])),
            "tasks": reports}

  def write_report(self, report: dict, directory: str | os.PathLike) -> None:
    """Each head's files in DIR/HEAD/, then DIR/report.json with every head's report."""
    directory = pathlib.Path(directory)
    for head in self.heads:
      head.task.write_report(report["tasks"][head.name], directory / head.name)
    write_text_atomically(directory / report_lib.JSON_FILENAME,
                          json.dumps(report, indent=2, allow_nan=False) + "\n")

  def sections(self, report: dict) -> list[tuple[str, dict, slice, tuple[str, ...]]]:
    """(head, its report, its outputs, its class names) per head."""
    return [(h.name, report["tasks"][h.name], h.outputs, h.task.class_names)
            for h in self.heads]

  def plots(self, directory: str | os.PathLike) -> dict[str, pathlib.Path]:
    directory = pathlib.Path(directory)
    return {f"{key}/{h.name}": path for h in self.heads
            for key, path in h.task.plots(directory / h.name).items()}

  def scalars(self, report: dict, split: str) -> dict[str, float]:
    scalars = {}
    for head in self.heads:
      scalars.update(_keyed(head.task.scalars(report["tasks"][head.name], split), head.name))
    scalars[f"{split}/accuracy/mean"] = report["accuracy"]
    return scalars

  def summary(self, report: dict) -> str:
    blocks = [f"mean accuracy over {len(self.heads)} heads: {report['accuracy']:.4f}"]
    for head in self.heads:
      blocks.append(f"--- head {head.name!r} ---\n"
                    + head.task.summary(report["tasks"][head.name]))
    return "\n\n".join(blocks)

  # --------------------------------------------------------- prediction, export
  def predictions(self, probs: np.ndarray, k: int) -> dict:
    """{"tasks": {head: that head's prediction ({"top": [...]}, ...)}}."""
    return {"tasks": {h.name: h.task.predictions(probs[h.outputs], k) for h in self.heads}}

  @property
  def output_names(self) -> tuple[str, ...]:
    """Two exported outputs per head: every 'logits_HEAD', then every 'probabilities_HEAD'."""
    return (tuple(f"logits_{h.name}" for h in self.heads)
            + tuple(f"probabilities_{h.name}" for h in self.heads))

  def outputs(self, logits) -> dict:
    """{'logits_HEAD': that head's logits, 'probabilities_HEAD': its probabilities}; a static
    slice in traced code (export converters reject the gather that indexing becomes under a
    symbolic batch dimension)."""
    if isinstance(logits, np.ndarray):
      sliced = {h.name: logits[..., h.outputs] for h in self.heads}
    else:
      sliced = {h.name: jax.lax.slice_in_dim(logits, h.start, h.outputs.stop, axis=-1)
                for h in self.heads}
    return {**{f"logits_{h.name}": sliced[h.name] for h in self.heads},
            **{f"probabilities_{h.name}": h.task.probabilities(sliced[h.name])
               for h in self.heads}}

  def join(self, outputs: dict) -> np.ndarray:
    return np.concatenate([np.asarray(outputs[f"logits_{h.name}"]) for h in self.heads], axis=-1)

  @property
  def primary(self) -> tuple[slice, tuple[str, ...]]:
    """The first head: the one the prediction log, feedback and drift monitor follow."""
    return self.heads[0].outputs, self.heads[0].task.class_names


TASKS[MultiTask.name] = MultiTask
