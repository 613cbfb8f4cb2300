"""Building a run's model and its model card from the config, the task and the image spec.

    task = tasks.from_config(config, dataset)
    model, card = build_model(config, task, spec)   # init_from applied; card ready to write

The model's head has `task.num_outputs` outputs (every head of a multi-task
model side by side) and, for uncertainty-weighted multi-task training, the
learned log-variances (`ModelOptions.uncertainty_weights`). The card records
what every later tool needs to rebuild and feed the model, the task included.
"""

from __future__ import annotations

import dataclasses

from flax import nnx
import ml_collections

from vision.checkpoint import ModelCard
from vision.compress import quant
from vision.data.pipeline import ImageSpec
from vision.models import ModelOptions, create_model
from vision.train import transfer


def build_model(config: ml_collections.ConfigDict, task,
                spec: ImageSpec) -> tuple[nnx.Module, ModelCard]:
  """The model `config.model` names, sized for `task` and `spec`, and its card."""
  options = ModelOptions(
      num_classes=task.num_outputs, in_channels=spec.channels, image_size=spec.size,
      dtype=config.model.dtype, dropout=config.model.dropout, drop_path=config.model.drop_path,
      widths=tuple(config.model.widths), hidden=config.model.hidden, stem=config.model.stem,
      conv_impl=config.model.conv_impl, uncertainty_weights=task.uncertainty_weights)
  model = create_model(config.model.name, options, rngs=nnx.Rngs(config.seed))
  transfer.maybe_load_pretrained(config, model, options)
  model = quant.quantize(model, **config.quant, input_shape=(spec.size, spec.size, spec.channels))
  model_options = {k: v for k, v in dataclasses.asdict(options).items()
                   if k not in ("num_classes", "in_channels", "image_size", "conv_impl")}
  card = ModelCard(
      arch=config.model.name, num_classes=task.num_outputs, class_names=task.class_names,
      image_size=spec.size, channels=spec.channels, mean=spec.mean, std=spec.std,
      model_options=model_options, best_metric=config.train.best_metric, task=task.to_json(),
      quantization=quant.card_entry(config.quant))
  return model, card
