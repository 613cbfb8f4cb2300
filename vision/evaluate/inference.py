"""Running a compiled predict function over a whole split.

    labels, probs = predict_split(lambda batch: steps.predict(state, batch),
                                  records, spec, batch_size=512, mesh=mesh)
    outputs = map_split(lambda batch: {"probs": ..., "features": ...}, records, spec, ...)

Batches are padded to a fixed size (one compilation) and spread over the
mesh; padding rows are dropped again before anything is scored.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from vision import parallel
from vision.data import pipeline
from vision.data.sources import RecordSource


def predict_split(predict: Callable[[dict], jax.Array], records: RecordSource,
                  spec: pipeline.ImageSpec, *, batch_size: int, mesh: jax.sharding.Mesh,
                  worker_count: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Labels [N] and class probabilities [N, C] for every record of the split.

  `batch_size` is global; each process feeds its share.
  """
  outputs = map_split(lambda batch: {"probs": predict(batch)}, records, spec,
                      batch_size=batch_size, mesh=mesh, worker_count=worker_count)
  return outputs["label"], outputs["probs"]


def map_split(compute: Callable[[dict], dict[str, jax.Array]], records: RecordSource,
              spec: pipeline.ImageSpec, *, batch_size: int, mesh: jax.sharding.Mesh,
              worker_count: int = 0) -> dict[str, np.ndarray]:
  """Every output of `compute(global_batch)` (a dict of [B, ...] arrays) for each record.

  Returns those outputs concatenated over the split ([N, ...] each, padding rows
  dropped) plus `label` [N]. `batch_size` is global; each process feeds its share.
  """
  per_process = batch_size // jax.process_count()
  gathered: dict[str, list[np.ndarray]] = {"label": []}
  for host_batch in pipeline.eval_batches(records, spec, batch_size=per_process,
                                          worker_count=worker_count):
    global_batch = parallel.to_global(host_batch, mesh)
    outputs = {key: parallel.to_host(value) for key, value in compute(global_batch).items()}
    mask = parallel.to_host(global_batch["mask"]).astype(bool)
    gathered["label"].append(parallel.to_host(global_batch["label"])[mask])
    for key, value in outputs.items():
      gathered.setdefault(key, []).append(value[mask])
  return {key: np.concatenate(values) for key, values in gathered.items()}
