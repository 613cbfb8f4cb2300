"""Experiment configs: the defaults every config starts from, and their validation.

A config file under `configs/` builds on `defaults()` and changes what its
experiment needs; `validate()` then checks the result before anything is built,
so a typo or a wrong type is one clear line, not a traceback from inside JAX:

    config = vision.config.defaults()
    config.model.name = "resnet18"
    config = vision.config.validate(config)          # raises ConfigError

`parse_arg` reads the `:arg` part of `--config=configs/NAME.py:smoke,epochs=2`
(the same convention as big_vision).
"""

from __future__ import annotations

import difflib
import json
import os
import pathlib
import sys
from typing import Any, Iterable

import jax
import ml_collections

from vision.files import write_text_atomically

# The embedded default dataset: Debian's `dataset-fashion-mnist` package.
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


class ConfigError(ValueError):
  """A user mistake in a config: the message is one actionable line."""


def defaults() -> ml_collections.ConfigDict:
  """Every key a config may set, with its default value and type."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  # `idx:PATH`, `folder:PATH`, `tfds:NAME` or `prepared:DIR` (experiments.prepare);
  # see vision/data/sources.py.
  c.data.source = f"idx:{DEBIAN_FASHION_MNIST}"
  c.data.tfds_data_dir = ml_collections.config_dict.placeholder(str)
  c.data.train_split = "train"
  c.data.val_split = "val"
  c.data.test_split = "test"
  # Carved from the training data (seeded, stratified) when a source has no
  # validation split of its own.
  c.data.val_fraction = 0.1
  # Used by folder sources without train/ and val/ sub-folders.
  c.data.test_fraction = 0.1
  # Seed of the carved splits; fixed apart from `seed` so runs share one split.
  c.data.split_seed = 0
  # Names for sources that carry none (IDX files); others give their own.
  c.data.class_names = ml_collections.config_dict.placeholder(tuple)
  # Input size the model sees; None keeps the source's size (must be uniform).
  c.data.image_size = ml_collections.config_dict.placeholder(int)
  # 1 (greyscale) or 3 (RGB); None keeps the source's channels.
  c.data.channels = ml_collections.config_dict.placeholder(int)
  # Training augmentation: pad-and-random-crop (pixels) and horizontal flips.
  c.data.crop_padding = 0
  c.data.flip = False
  # More training augmentation (vision/data/augment.py), all seeded. Host side, in grain:
  # Inception-style random-resized crop back to the input size (area scale, aspect ratio).
  c.data.random_resized_crop = False
  c.data.rrc_scale = (0.08, 1.0)
  c.data.rrc_ratio = (0.75, 1.3333333333333333)
  c.data.vflip = False
  # Random rotation, uniform in [-rotation, +rotation] degrees.
  c.data.rotation = 0.0
  # Brightness/contrast/saturation factors uniform in [1 - s, 1 + s].
  c.data.color_jitter = 0.0
  # RandAugment: ops per image (0: off) and magnitude (0-10).
  c.data.randaugment_ops = 0
  c.data.randaugment_magnitude = 9
  # On device, under jit: mixup / cutmix with lam ~ Beta(alpha, alpha); 0 turns one off,
  # with both on each batch takes one of them at random.
  c.data.mixup_alpha = 0.0
  c.data.cutmix_alpha = 0.0
  # Normalisation after scaling to [0, 1]: (x - mean) / std per channel.
  c.data.mean = (0.5,)
  c.data.std = (0.5,)
  c.data.worker_count = 0
  # 'shuffle' (every example once per epoch) or 'balanced' (each batch holds every class
  # equally often; small classes are oversampled). See vision/data/sampling.py.
  c.data.sampler = "shuffle"
  # Limits for smoke runs and debugging; None uses every example.
  c.data.max_train_examples = ml_collections.config_dict.placeholder(int)
  c.data.max_eval_examples = ml_collections.config_dict.placeholder(int)

  c.model = ml_collections.ConfigDict()
  c.model.name = "small_cnn"
  # None: follows the data's number of classes.
  c.model.num_classes = ml_collections.config_dict.placeholder(int)
  # Compute dtype; parameters stay float32.
  c.model.dtype = "float32"
  c.model.dropout = 0.0
  # Stochastic depth (drop path) rate for the families that use it.
  c.model.drop_path = 0.0
  # The small CNN: one conv stage per width, then a hidden layer of `hidden` units.
  c.model.widths = (32, 64)
  c.model.hidden = 128
  # ResNet stem: 'auto' picks the small-image stem below 64 px.
  c.model.stem = "auto"
  # How convolutions are lowered: 'matmul' (im2col matmuls, fast on XLA:CPU), 'lax'
  # (lax.conv, for GPU/TPU) or 'auto' (matmul on the CPU backend, lax elsewhere).
  # Parameters are the same either way; see vision/models/layers.py.
  c.model.conv_impl = "auto"
  # A model directory (a training workdir or an experiments.import_weights output) whose
  # parameters initialise this model; the head is new when num_classes differs.
  c.model.init_from = ml_collections.config_dict.placeholder(str)
  # With init_from: a freshly initialised head even when the number of classes matches.
  c.model.reset_head = False

  # Transfer learning by layer group (model.layer_groups()); see vision/train/transfer.py.
  c.transfer = ml_collections.ConfigDict()
  # 'none', 'linear_probe', 'fine_tune' or 'gradual_unfreeze'.
  c.transfer.mode = "none"
  # fine_tune / gradual_unfreeze: LR of group i of n = LR * layer_decay ** (n - 1 - i).
  c.transfer.layer_decay = 1.0
  # gradual_unfreeze: epochs between unfreezing one more group, from the head down.
  c.transfer.unfreeze_every_epochs = 1.0
  # BatchNorm on running statistics everywhere (frozen groups always use them).
  c.transfer.freeze_batch_norm = False

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 128
  c.train.epochs = 10.0
  # Overrides epochs when set.
  c.train.num_steps = ml_collections.config_dict.placeholder(int)
  c.train.eval_batch_size = 512
  c.train.log_every_steps = 100
  # None: once per epoch.
  c.train.eval_every_steps = ml_collections.config_dict.placeholder(int)
  c.train.checkpoint_every_steps = ml_collections.config_dict.placeholder(int)
  c.train.keep_checkpoints = 2
  # The validation metric that picks the best checkpoint.
  c.train.best_metric = "val/accuracy"
  c.train.label_smoothing = 0.0
  # Imbalance (vision/train/imbalance.py): 'cross_entropy' or 'focal' (softmax focal loss).
  c.train.loss = "cross_entropy"
  c.train.focal_gamma = 2.0
  # 'none' or 'balanced': per-class loss weights N / (C * count_c) from the training split.
  c.train.class_weights = "none"
  # From this largest/smallest class ratio of the training split on, a best_metric left at
  # 'val/accuracy' becomes 'val/macro_f1'; None keeps accuracy.
  c.train.imbalance_threshold = 3.0

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "sgd"  # 'sgd' or 'adamw'
  c.optim.learning_rate = 0.1
  c.optim.momentum = 0.9
  c.optim.nesterov = True
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.weight_decay = 5e-4
  c.optim.schedule = "cosine"  # 'cosine', 'step', 'linear' or 'constant'
  c.optim.warmup_epochs = 0.0
  # For 'step': fractions of training at which the LR is multiplied by step_factor.
  c.optim.step_boundaries = (0.5, 0.75)
  c.optim.step_factor = 0.1
  c.optim.grad_clip_norm = ml_collections.config_dict.placeholder(float)

  # Knowledge distillation (vision/train/distill.py); no teachers: plain training.
  c.distill = ml_collections.ConfigDict()
  # Model directories of the teacher; several form an ensemble (mean of probabilities).
  c.distill.teachers = ()
  # Softmax temperature of teacher and student in the KL term.
  c.distill.temperature = 1.0
  # loss = (1 - w) * T^2 * KL(teacher || student) + w * cross-entropy with the labels.
  c.distill.hard_label_weight = 0.0
  # 'distilled', or 'alone': the baseline, trained on the labels with the run's own loss and
  # augmentation; the teacher only measures agreement (val/ and test/agreement).
  c.distill.variant = "distilled"

  c.wandb = ml_collections.ConfigDict()
  c.wandb.project = ml_collections.config_dict.placeholder(str)
  c.wandb.entity = ml_collections.config_dict.placeholder(str)
  c.wandb.name = ml_collections.config_dict.placeholder(str)
  c.wandb.group = ml_collections.config_dict.placeholder(str)
  # None: WANDB_MODE, else online when logged in, else offline.
  c.wandb.mode = ml_collections.config_dict.placeholder(str)
  return c


def use_fashion_mnist(config: ml_collections.ConfigDict) -> None:
  """Points `config.data` at Fashion-MNIST: Debian's offline copy, else TFDS (downloads)."""
  if os.path.isdir(DEBIAN_FASHION_MNIST):
    config.data.source = f"idx:{DEBIAN_FASHION_MNIST}"
    config.data.class_names = FASHION_MNIST_CLASSES
  else:
    print(f"{DEBIAN_FASHION_MNIST} not found (Debian package dataset-fashion-mnist); "
          "using TFDS fashion_mnist instead, which downloads it when online", file=sys.stderr)
    config.data.source = "tfds:fashion_mnist"


def parse_arg(arg: str | None, **defaults_: Any) -> ml_collections.ConfigDict:
  """Parses 'smoke,epochs=2' into {'smoke': True, 'epochs': 2} with typed defaults."""
  result = ml_collections.ConfigDict(dict(defaults_))
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if key not in defaults_:
      raise ConfigError(
          f"config argument '{key}' is unknown; this config accepts: "
          f"{', '.join(sorted(defaults_))}")
    if not sep:
      result[key] = True
      continue
    kind = type(defaults_[key])
    try:
      result[key] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
    except ValueError:
      raise ConfigError(
          f"config argument '{key}={value}' is not a {kind.__name__}") from None
  return result


_CHOICES = {
    "model.dtype": ("float32", "bfloat16"),
    "optim.name": ("sgd", "adamw"),
    "optim.schedule": ("cosine", "step", "linear", "constant"),
    "model.stem": ("auto", "small", "imagenet"),
    "data.sampler": ("shuffle", "balanced"),
    "train.loss": ("cross_entropy", "focal"),
    "train.class_weights": ("none", "balanced"),
    "model.conv_impl": ("auto", "matmul", "lax"),
    "transfer.mode": ("none", "linear_probe", "fine_tune", "gradual_unfreeze"),
    "distill.variant": ("distilled", "alone"),
}


def validate(config: ml_collections.ConfigDict, *,
             check_environment: bool = True) -> ml_collections.ConfigDict:
  """Returns `config` merged over the defaults, or raises a one-line ConfigError.

  `check_environment` also checks what depends on this machine: the device
  count and that the data source exists.
  """
  merged = defaults()
  _merge_checked(merged, config, prefix="")
  _check_values(merged)
  if check_environment:
    _check_environment(merged)
  return merged


def _unknown_key(group: ml_collections.ConfigDict, key: str, prefix: str) -> ConfigError:
  close = difflib.get_close_matches(key, list(group.keys()), n=1)
  hint = f"; did you mean '{prefix}{close[0]}'?" if close else (
      f"; known keys under '{prefix.rstrip('.') or 'config'}': {', '.join(sorted(group.keys()))}")
  return ConfigError(f"config key '{prefix}{key}' is unknown{hint}")


def check_override_keys(paths: Iterable[str]) -> None:
  """Raises ConfigError for a `--config.a.b=...` override naming no known key."""
  for path in paths:
    group, prefix = defaults(), ""
    for key in path.split("."):
      if not isinstance(group, ml_collections.ConfigDict) or key not in group:
        raise _unknown_key(group, key, prefix)
      group, prefix = group[key], f"{prefix}{key}."


def _merge_checked(target: ml_collections.ConfigDict, source: Any, prefix: str) -> None:
  for key, value in source.items():
    path = f"{prefix}{key}"
    if key not in target:
      raise _unknown_key(target, key, prefix)
    expected = target[key]
    if isinstance(expected, ml_collections.ConfigDict):
      if not isinstance(value, (ml_collections.ConfigDict, dict)):
        raise ConfigError(f"config key '{path}' must be a group of keys, got {value!r}")
      _merge_checked(expected, value, prefix=f"{path}.")
      continue
    with target.unlocked():
      target[key] = _coerce(path, value, _expected_type(target, key))


def _expected_type(group: ml_collections.ConfigDict, key: str) -> type | None:
  field = group._fields[key]  # pylint: disable=protected-access
  if isinstance(field, ml_collections.FieldReference):
    return field.get_type()
  return None if field is None else type(field)


def _coerce(path: str, value: Any, expected: type | None) -> Any:
  if value is None or expected is None:
    return value
  if expected is float and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  if expected is tuple and isinstance(value, list):
    return tuple(value)
  if expected is bool and not isinstance(value, bool):
    raise ConfigError(f"config key '{path}' must be true or false, got {value!r}")
  if expected in (int, float) and isinstance(value, bool):
    raise ConfigError(f"config key '{path}' must be a number, got {value!r}")
  if not isinstance(value, expected):
    raise ConfigError(
        f"config key '{path}' must be {expected.__name__}, got {type(value).__name__} {value!r}")
  return value


def _check_values(c: ml_collections.ConfigDict) -> None:
  for path, allowed in _CHOICES.items():
    group, key = path.split(".")
    if c[group][key] not in allowed:
      raise ConfigError(
          f"config key '{path}' is {c[group][key]!r}; expected one of {', '.join(allowed)}")
  positive = ("train.batch_size", "train.eval_batch_size", "train.log_every_steps",
              "optim.learning_rate", "train.keep_checkpoints")
  for path in positive:
    group, key = path.split(".")
    if not c[group][key] > 0:
      raise ConfigError(f"config key '{path}' must be > 0, got {c[group][key]!r}")
  from vision.models import MODELS  # pylint: disable=import-outside-toplevel  (models import this module)
  if c.model.name not in MODELS:
    raise ConfigError(
        f"config key 'model.name' is {c.model.name!r}; known models: {', '.join(sorted(MODELS))}")
  if not 0 <= c.train.label_smoothing < 1:
    raise ConfigError(
        f"config key 'train.label_smoothing' must be in [0, 1), got {c.train.label_smoothing}")
  _check_augmentation(c.data)
  if not c.train.focal_gamma >= 0:
    raise ConfigError(f"config key 'train.focal_gamma' must be >= 0, got {c.train.focal_gamma}")
  if c.train.imbalance_threshold is not None and not c.train.imbalance_threshold >= 1:
    raise ConfigError("config key 'train.imbalance_threshold' must be >= 1 (a largest/smallest "
                      f"class ratio) or None, got {c.train.imbalance_threshold}")
  _check_transfer(c)
  if not c.distill.temperature > 0:
    raise ConfigError(
        f"config key 'distill.temperature' must be > 0, got {c.distill.temperature}")
  if not 0 <= c.distill.hard_label_weight <= 1:
    raise ConfigError(f"config key 'distill.hard_label_weight' must be in [0, 1], "
                      f"got {c.distill.hard_label_weight}")
  if len(c.data.mean) != len(c.data.std):
    raise ConfigError("config keys 'data.mean' and 'data.std' must have the same length")


def _check_augmentation(data: ml_collections.ConfigDict) -> None:
  for key in ("rrc_scale", "rrc_ratio"):
    low_high = tuple(data[key])
    if len(low_high) != 2 or not 0 < low_high[0] <= low_high[1]:
      raise ConfigError(f"config key 'data.{key}' must be (low, high) with 0 < low <= high, "
                        f"got {low_high}")
  if data.rrc_scale[1] > 1:
    raise ConfigError(f"config key 'data.rrc_scale' must stay within (0, 1], got {data.rrc_scale}")
  for key in ("rotation", "color_jitter", "mixup_alpha", "cutmix_alpha", "randaugment_ops"):
    if not data[key] >= 0:
      raise ConfigError(f"config key 'data.{key}' must be >= 0, got {data[key]}")
  if not 0 <= data.randaugment_magnitude <= 10:
    raise ConfigError("config key 'data.randaugment_magnitude' must be in [0, 10], "
                      f"got {data.randaugment_magnitude}")


def _check_transfer(c: ml_collections.ConfigDict) -> None:
  if not 0 < c.transfer.layer_decay <= 1:
    raise ConfigError(
        f"config key 'transfer.layer_decay' must be in (0, 1], got {c.transfer.layer_decay}")
  if not c.transfer.unfreeze_every_epochs > 0:
    raise ConfigError("config key 'transfer.unfreeze_every_epochs' must be > 0, got "
                      f"{c.transfer.unfreeze_every_epochs}")
  if c.transfer.mode == "linear_probe" and not c.model.init_from:
    raise ConfigError("config key 'transfer.mode'='linear_probe' needs 'model.init_from' "
                      "(the model directory whose backbone is probed)")


def _check_environment(c: ml_collections.ConfigDict) -> None:
  for path in ("train.batch_size", "train.eval_batch_size"):
    group, key = path.split(".")
    if c[group][key] % jax.device_count():
      raise ConfigError(
          f"config key '{path}'={c[group][key]} is not divisible by the "
          f"{jax.device_count()} devices; use a multiple of {jax.device_count()}")
  _check_source_exists(c.data.source)
  if c.model.init_from and not os.path.isfile(os.path.join(c.model.init_from, "model_card.json")):
    raise ConfigError(
        f"config key 'model.init_from': {c.model.init_from!r} is not a model directory "
        "(no model_card.json; expected a training workdir or an experiments.import_weights --out)")


def _check_source_exists(source: str) -> None:
  kind, sep, location = source.partition(":")
  if not sep or kind not in ("idx", "folder", "tfds", "prepared"):
    raise ConfigError(
        f"config key 'data.source' is {source!r}; expected 'idx:PATH', 'folder:PATH', "
        "'tfds:NAME' or 'prepared:DIR'")
  if kind in ("idx", "folder", "prepared") and not os.path.isdir(location):
    hint = ""
    if location == DEBIAN_FASHION_MNIST:
      hint = (" (install Debian's dataset-fashion-mnist, or use "
              "--config.data.source=tfds:fashion_mnist)")
    raise ConfigError(f"config key 'data.source': directory {location!r} does not exist{hint}")
  if kind == "prepared" and not os.path.isfile(os.path.join(location, "metadata.json")):
    raise ConfigError(
        f"config key 'data.source': {location!r} is not a prepared dataset (no metadata.json); "
        "make it with python -m experiments.prepare --source=... --out=DIR")


RESOLVED_CONFIG = "config.json"


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
  return flat


def save_resolved(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> list[str]:
  """Writes `workdir/config.json`; returns the keys that differ from an earlier run's."""
  path = pathlib.Path(workdir) / RESOLVED_CONFIG
  new = config.to_dict()
  changed = []
  if path.exists():
    old = _flatten(json.loads(path.read_text()))
    changed = sorted(k for k, v in _flatten(new).items() if old.get(k, v) != v)
  write_text_atomically(path, json.dumps(new, indent=2, default=list))
  return changed


def load_resolved(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
  """The validated config a run in `workdir` used."""
  path = pathlib.Path(workdir) / RESOLVED_CONFIG
  if not path.exists():
    raise ConfigError(f"{path} does not exist: --workdir must be a directory written by "
                      "experiments.train")
  return validate(ml_collections.ConfigDict(json.loads(path.read_text())),
                  check_environment=False)
