"""Where a classification head's labels come from: the dataset's label, a mapping of it, a column.

    source = label_source("map:configs/fashion_mnist_garment.json", dataset, key="task.heads.garment.source")
    source.class_names             # ('tops', 'bottoms', 'dresses', 'footwear', 'bags')
    labels = source.labels(batch)  # int32 [B]: on device inside the train step, or on the host

Three kinds, written as a config string:
  * `label` — the dataset's own label (`batch['label']`), its class names;
  * `map:FILE.json` — a JSON object {class: group} over every class of the
    dataset; the head predicts the group (groups in order of first appearance);
  * `column:NAME` — another label column of a CSV prepared by
    `experiments.prepare` (`batch['label/NAME']`), its values sorted.

A source is stored in the model card as plain JSON (`to_json`), the mapping
table included, so evaluation, export and serving never need the file again.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os

import jax.numpy as jnp
import numpy as np

from vision.data.pipeline import label_fields
from vision.data.sources import COLUMN_PREFIX, Dataset, RecordSource, record_labels
from vision.errors import ConfigError

@dataclasses.dataclass(frozen=True)
class LabelSource:
  """A head's labels as a function of the batch: `batch[key]`, through `table` when mapped."""
  spec: str = "label"                 # as written in the config
  key: str = "label"                  # the batch field read
  table: tuple[int, ...] | None = None  # map: the dataset's class index → the head's class index
  # The classes it yields; the head that reads it keeps its own (possibly padded) copy.
  class_names: tuple[str, ...] = dataclasses.field(default=(), compare=False)

  def labels(self, batch: dict):
    """int32 [B] labels of this head; numpy in, numpy out (host), jax in, jax out (device)."""
    labels = batch[self.key]
    if self.table is None:
      return labels
    if isinstance(labels, np.ndarray):
      return np.asarray(self.table, np.int32)[labels]
    # A select over the (few) classes, not a gather: batches are sharded over the mesh's
    # explicit 'data' axis, which a gather from an unsharded table cannot take.
    table = jnp.asarray(self.table, jnp.int32)
    return jnp.sum(jnp.where(labels[..., None] == jnp.arange(len(self.table)), table, 0), axis=-1)

  def record_labels(self, records: RecordSource) -> np.ndarray:
    """This head's label of every record (int64 [N]), without decoding images."""
    if self.key == "label":
      return self.labels({"label": record_labels(records)})
    return label_fields(records, np.arange(len(records)))[self.key].astype(np.int64)

  def to_json(self) -> dict:
    return {"source": self.spec, "key": self.key,
            "table": None if self.table is None else list(self.table)}

  @classmethod
  def from_json(cls, fields: dict, class_names: tuple[str, ...]) -> "LabelSource":
    table = fields.get("table")
    return cls(fields.get("source", "label"), fields.get("key", "label"),
               None if table is None else tuple(table), tuple(class_names))


def label_source(spec: str, dataset: Dataset, *, key: str) -> LabelSource:
  """The source `spec` over `dataset`; `key` names the config key in errors (ConfigError)."""
  kind, _, argument = spec.partition(":")
  if spec != "label" and not (kind in ("map", "column") and argument):
    raise ConfigError(f"config key '{key}' is {spec!r}; expected 'label', 'map:FILE.json' "
                      "(class → group) or 'column:NAME' (a label column of a prepared CSV)")
  if kind == "label":
    return LabelSource(spec, "label", None, dataset.class_names)
  if kind == "map":
    return _mapped(spec, argument, dataset.class_names, key)
  return _column(spec, argument, dataset, key)


def _mapped(spec: str, path: str, class_names: tuple[str, ...], key: str) -> LabelSource:
  if not os.path.isfile(path):
    raise ConfigError(f"config key '{key}': mapping file {path!r} does not exist (expected a "
                      "JSON object {class: group})")
  try:
    with open(path, encoding="utf-8") as handle:
      mapping = json.load(handle)
  except (OSError, json.JSONDecodeError) as error:
    raise ConfigError(f"config key '{key}': cannot read {path} as JSON ({error})") from None
  if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
    raise ConfigError(f"config key '{key}': {path} must hold a JSON object {{class: group}} "
                      "with string groups")
  for name in mapping:
    if name not in class_names:
      close = difflib.get_close_matches(name, class_names, n=1)
      hint = f"; did you mean {close[0]!r}?" if close else f"; the classes are {list(class_names)}"
      raise ConfigError(f"config key '{key}': {path} maps {name!r}, which is not a class of the "
                        f"data{hint}")
  missing = [name for name in class_names if name not in mapping]
  if missing:
    raise ConfigError(f"config key '{key}': {path} does not map the classes {missing}; map "
                      "every class of the data to a group")
  groups = tuple(dict.fromkeys(mapping.values()))
  table = tuple(groups.index(mapping[name]) for name in class_names)
  return LabelSource(spec, "label", table, groups)


def _column(spec: str, column: str, dataset: Dataset, key: str) -> LabelSource:
  if column not in dataset.label_columns:
    known = ", ".join(sorted(dataset.label_columns)) or "none"
    raise ConfigError(f"config key '{key}': the data has no label column {column!r} (its extra "
                      f"label columns: {known}; they come from a CSV prepared by "
                      "experiments.prepare)")
  source = LabelSource(spec, COLUMN_PREFIX + column, None, dataset.label_columns[column])
  for split, records in dataset.splits.items():
    missing = int((source.record_labels(records) < 0).sum())
    if missing:
      raise ConfigError(f"config key '{key}': {missing} images of split {split!r} have no value "
                        f"in column {column!r}; fill the column in the CSV and prepare again")
  return source
