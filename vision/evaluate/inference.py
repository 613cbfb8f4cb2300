"""Running a compiled predict function over a whole split.

    labels, probs = predict_split(lambda batch: steps.predict(state, batch),
                                  records, spec, batch_size=512, mesh=mesh)

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
  per_process = batch_size // jax.process_count()
  labels, probs = [], []
  for host_batch in pipeline.eval_batches(records, spec, batch_size=per_process,
                                          worker_count=worker_count):
    global_batch = parallel.to_global(host_batch, mesh)
    batch_probs = parallel.to_host(predict(global_batch))
    mask = parallel.to_host(global_batch["mask"]).astype(bool)
    labels.append(parallel.to_host(global_batch["label"])[mask])
    probs.append(batch_probs[mask])
  return np.concatenate(labels), np.concatenate(probs)
