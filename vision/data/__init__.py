"""Data: sources (idx:, folder:, csv:, labelstudio:, tfds:, prepared:) and the grain pipeline.

    dataset, spec = open_from_config(config.data)
    dataset.class_names, len(dataset.split("train")), spec.size
"""

from __future__ import annotations

from vision.data import prepared  # noqa: F401  (registers the prepared: source)
from vision.data.pipeline import ImageSpec, image_spec
from vision.data.sources import Dataset, open_dataset, split_options


def open_from_config(data_config) -> tuple[Dataset, ImageSpec]:
  """The dataset named by `config.data.source` and the image spec the model will see."""
  dataset = open_dataset(data_config.source, split_options(data_config))
  sample = dataset.split(data_config.train_split)[0]["image"]
  return dataset, image_spec(data_config, sample, default_size=dataset.image_size)
