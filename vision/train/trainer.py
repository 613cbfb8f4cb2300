"""Which trainer runs a config: the supervised loop, or the linear probe on cached features.

    report = train(config, "runs/probe")     # what experiments.train calls

`transfer.mode='linear_probe'` trains only the head, on the backbone's
features computed once and cached (vision/train/probe.py: fast, and
reproducible run to run); every other config goes through the training loop
(vision/train/loop.py), which can also train a linear probe end to end, images
through the frozen backbone at every step.
"""

from __future__ import annotations

import os

import ml_collections

from vision import config as config_lib
from vision.train import loop, probe


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike, **options) -> dict:
  """Trains (or resumes) `config` in `workdir`; returns the test report (see `loop.train`)."""
  if config_lib.validate(config).transfer.mode == "linear_probe":
    return probe.train_probe(config, workdir)
  return loop.train(config, workdir, **options)
