"""Channel surgery: a channel-pruned model directory rebuilt with narrower layers.

    report = shrink_model_dir("runs/channel50", "runs/channel50_narrow")
    report["widths"], report["flops"], report["max_abs_logit_diff"]

Channel pruning (`prune.granularity="channel"`) zeroes whole output channels of
convolutions together with the BatchNorm scale and bias after them, so such a
channel outputs exactly zero and nothing downstream depends on it. Here each
dead channel is removed: its kernel slice and BatchNorm entries, and the
input slice of the next layer that reads it (the next convolution, or the
rows of the dense layer that reads the flattened feature map). The result is
a new model directory with the narrower `widths` in its model card, which
evaluate, export and serve read like any other; its logits equal the pruned
model's (checked on random inputs, `max_abs_logit_diff`). FLOPs are XLA's
cost analysis of one forward pass at batch 1. Supports the small CNN, the
family channel pruning trains.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from vision import config as config_lib
from vision.checkpoint import ModelCard, load_model, write_model_dir
from vision.config import ConfigError
from vision.files import write_text_atomically
from vision.models import create_model

SHRINK_REPORT = "shrink_report.json"


def parameter_count(model: nnx.Module) -> int:
  """Number of trainable parameters (every `nnx.Param` element)."""
  return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def forward_flops(model: nnx.Module, input_shape: tuple[int, int, int]) -> float:
  """Floating-point operations of one image's forward pass (XLA's cost analysis)."""
  model.eval()
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
  compiled = forward.lower(state, jnp.zeros((1, *input_shape), jnp.float32)).compile()
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float(analysis.get("flops", 0.0))


def live_channels(model: nnx.Module) -> list[np.ndarray]:
  """Per conv stage, the indices of channels that are not entirely zero."""
  kept = []
  for stage in model.stages:
    kernel = np.asarray(stage.conv.kernel[...])
    alive = (np.abs(kernel).reshape(-1, kernel.shape[-1]).max(axis=0) > 0)
    alive |= np.asarray(stage.norm.scale[...]) != 0
    alive |= np.asarray(stage.norm.bias[...]) != 0
    kept.append(np.flatnonzero(alive))
  return kept


def narrow_copy(model: nnx.Module, card: ModelCard) -> tuple[nnx.Module, ModelCard]:
  """A small CNN without `model`'s dead channels, and its card (new `widths`)."""
  if card.arch != "small_cnn":
    raise ConfigError(f"channel surgery rebuilds small_cnn models; this directory holds "
                      f"{card.arch!r} (prune it with prune.granularity='unstructured')")
  kept = live_channels(model)
  widths = tuple(int(len(k)) for k in kept)
  narrow_card = dataclasses.replace(card, model_options={**card.model_options, "widths": widths})
  narrow = create_model(card.arch, narrow_card.options(), rngs=nnx.Rngs(0))
  inputs = np.arange(card.channels)
  for old, new, keep in zip(model.stages, narrow.stages, kept):
    new.conv.kernel[...] = jnp.asarray(np.asarray(old.conv.kernel[...])[:, :, inputs][..., keep])
    for name in ("scale", "bias", "mean", "var"):
      source = old.norm.scale if name == "scale" else getattr(old.norm, name)
      getattr(new.norm, name)[...] = jnp.asarray(np.asarray(source[...])[keep])
    inputs = keep
  # The hidden layer reads the flattened [side, side, channels] map: keep its rows for `inputs`.
  hidden = np.asarray(model.hidden.kernel[...])
  side = int(round((hidden.shape[0] / card.model_options["widths"][-1]) ** 0.5))
  rows = hidden.reshape(side, side, -1, hidden.shape[-1])[:, :, inputs]
  narrow.hidden.kernel[...] = jnp.asarray(rows.reshape(-1, hidden.shape[-1]))
  narrow.hidden.bias[...] = model.hidden.bias[...]
  narrow.head.kernel[...] = model.head.kernel[...]
  narrow.head.bias[...] = model.head.bias[...]
  narrow.eval()
  return narrow, narrow_card


def shrink_model_dir(workdir: str | os.PathLike, out: str | os.PathLike, *,
                     check_images: int = 64) -> dict:
  """Writes OUT, the narrower model directory of channel-pruned WORKDIR; returns the report."""
  workdir, out = pathlib.Path(workdir), pathlib.Path(out)
  if out.exists() and any(out.iterdir()):
    raise ConfigError(f"--out={out} is not empty; choose a new directory for the narrow model")
  model, card = load_model(workdir)
  narrow, narrow_card = narrow_copy(model, card)
  shape = (card.image_size, card.image_size, card.channels)
  images = jax.random.normal(jax.random.key(0), (check_images, *shape))
  difference = float(jnp.max(jnp.abs(narrow(images) - model(images))))
  write_model_dir(out, narrow, narrow_card)
  resolved = workdir / config_lib.RESOLVED_CONFIG
  if resolved.exists():  # the data the model was trained on, for export's parity check
    config = json.loads(resolved.read_text())
    config["model"]["widths"] = list(narrow_card.model_options["widths"])
    write_text_atomically(out / config_lib.RESOLVED_CONFIG, json.dumps(config, indent=2))
  report = {
      "source": str(workdir.absolute()),
      "widths_before": list(card.model_options["widths"]),
      "widths": list(narrow_card.model_options["widths"]),
      "params_before": parameter_count(model), "params": parameter_count(narrow),
      "flops_before": forward_flops(model, shape), "flops": forward_flops(narrow, shape),
      "max_abs_logit_diff": difference,
  }
  write_text_atomically(out / SHRINK_REPORT, json.dumps(report, indent=2))
  return report
