"""What a training loop logs through: the run's metric writer, and averaged step metrics.

    writer = create_writer(config, workdir, start_step)    # metrics.jsonl + W&B (main process)
    scalars = mean_metrics(pending)                        # per-step device metrics → floats
    writer.write_scalars(step, scalars)

Used by the supervised loop (vision/train/loop.py) and the linear probe
(vision/train/probe.py) alike.
"""

from __future__ import annotations

import pathlib

import jax
import ml_collections
import numpy as np

from vision import logging as logging_lib
from vision import parallel


def create_writer(config: ml_collections.ConfigDict, workdir: pathlib.Path, start_step: int):
  """The run's writer: metrics.jsonl and, on the main process, W&B as `config.wandb` says."""
  wandb_run = None
  if parallel.is_main_process():
    wandb_run = logging_lib.init_wandb(
        config.to_dict(), workdir, project=config.wandb.project, entity=config.wandb.entity,
        name=config.wandb.name, group=config.wandb.group, mode=config.wandb.mode)
  return logging_lib.create_metric_writer(
      workdir, run=wandb_run, resume_step=start_step, is_main_process=parallel.is_main_process())


def mean_metrics(pending: list[dict]) -> dict[str, float]:
  """The mean of each metric over the steps since the last log line (one device fetch)."""
  fetched = jax.device_get(pending)
  return {key: float(np.mean([m[key] for m in fetched])) for key in fetched[0]}
