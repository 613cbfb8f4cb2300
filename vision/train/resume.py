"""Starting or resuming a run in a workdir: judge it first, write only when it fits.

    state, start_step = restore_latest(config, workdir, checkpoints, state, data_iterator, dataset)
    record_run(config, workdir, card, dataset, start_step)   # config.json, model_card.json, splits.json

`restore_latest` only reads: it compares the latest checkpoint's structure
(model and optimizer, from Orbax metadata) with this config's, and the
dataset's split fingerprints with those recorded at the start, and raises a
one-line ConfigError / SourceError naming what differs. So a resume with a
changed architecture or changed data leaves the workdir byte for byte as it
was, and `evaluate` / `predict` keep working on it. `record_run` then writes
the run's files, each atomically.
"""

from __future__ import annotations

import logging
import os
import pathlib

import grain
import ml_collections

from vision import checkpoint as checkpoint_lib
from vision import config as config_lib
from vision import parallel
from vision.data import fingerprint
from vision.data.sources import Dataset
from vision.checkpoint import TrainState

log = logging.getLogger("vision")


def _split_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  return (config.data.train_split, config.data.val_split, config.data.test_split)


def restore_latest(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                   checkpoints: checkpoint_lib.Checkpoints, state: TrainState,
                   data_iterator: grain.DatasetIterator,
                   dataset: Dataset | None) -> tuple[TrainState, int]:
  """The state to train from and its step (0: a fresh start); writes nothing."""
  start_step = checkpoints.latest_step() or 0
  changed = config_lib.changed_keys(config, workdir)
  if start_step:
    checkpoints.check_fits(start_step, state, changed_keys=changed, workdir=workdir)
    if dataset is not None:
      fingerprint.check_unchanged(
          workdir, fingerprint.split_fingerprints(dataset, _split_names(config)))
    state = checkpoints.restore(start_step, state, data_iterator)
  if changed:
    log.warning("config differs from the earlier run in this workdir: %s", ", ".join(changed))
  return state, start_step


def record_run(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
               card: checkpoint_lib.ModelCard, dataset: Dataset | None, start_step: int) -> None:
  """Writes the run's config.json and model_card.json, and splits.json when starting afresh
  (or when a run from before fingerprints has none); main process only."""
  if not parallel.is_main_process():
    return
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  config_lib.save_resolved(config, workdir)
  card.write(workdir)
  if dataset is not None and not (start_step and fingerprint.read(workdir) is not None):
    fingerprint.write(workdir, fingerprint.split_fingerprints(dataset, _split_names(config)))
