"""Running a compiled predict function over a whole split.

    labels, probs = predict_split(lambda batch: steps.predict(state, batch),
                                  records, spec, batch_size=512, mesh=mesh)
    targets, probs = predict_split(predict, records, spec, batch_size=512, mesh=mesh,
                                   targets=task.targets)   # what the task scores against

Batches are padded to a fixed size (one compilation) and spread over the
mesh; padding rows are dropped again before anything is scored.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from vision import parallel
from vision.data import pipeline
from vision.data.sources import RecordSource


def _labels(batch: dict) -> np.ndarray:
  return batch["label"]


def predict_split(predict: Callable[[dict], jax.Array], records: RecordSource,
                  spec: pipeline.ImageSpec, *, batch_size: int, mesh: jax.sharding.Mesh,
                  worker_count: int = 0,
                  targets: Callable[[dict], Any] = _labels) -> tuple[Any, np.ndarray]:
  """Targets and outputs [N, ...] for every record of the split.

  `targets(host_batch)` picks what to collect from each batch's labels (an array
  [B, ...] or a dict of them; default: the integer labels [B]); `predict` gives
  the outputs, usually class probabilities [B, C] (or a dict of such arrays). `batch_size` is global; each
  process feeds its share.
  """
  per_process = batch_size // jax.process_count()
  collected, outputs = [], []
  for host_batch in pipeline.eval_batches(records, spec, batch_size=per_process,
                                          worker_count=worker_count):
    global_batch = parallel.to_global(host_batch, mesh)
    batch_outputs = jax.tree.map(parallel.to_host, predict(global_batch))
    mask = parallel.to_host(global_batch["mask"]).astype(bool)
    fields = {key: parallel.to_host(value) for key, value in global_batch.items()
              if key not in ("image", "mask")}
    collected.append(jax.tree.map(lambda x: np.asarray(x)[mask], targets(fields)))
    outputs.append(jax.tree.map(lambda x: np.asarray(x)[mask], batch_outputs))
  concatenate = lambda *parts: np.concatenate(parts)  # pylint: disable=unnecessary-lambda-assignment
  return jax.tree.map(concatenate, *collected), jax.tree.map(concatenate, *outputs)
