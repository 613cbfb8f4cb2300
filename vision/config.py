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
import importlib.util
import json
import logging
import os
import pathlib
import re
import sys
from typing import Any, Iterable

import jax
import ml_collections

from vision.errors import ConfigError
from vision.files import write_text_atomically
from vision.models import MODELS

# The embedded default dataset: Debian's `dataset-fashion-mnist` package.
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


# What `wandb.mode` (and $WANDB_MODE) may say; vision/logging.py maps them (and W&B's legacy
# 'run' and 'dryrun') to W&B's modes.
WANDB_MODES = ("online", "offline", "disabled")
_WANDB_ACCEPTED = WANDB_MODES + ("run", "dryrun")


def defaults() -> ml_collections.ConfigDict:
  """Every key a config may set, with its default value and type."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  # `idx:PATH`, `folder:PATH`, `csv:FILE`, `labelstudio:FILE`, `tfds:NAME` or
  # `prepared:DIR` (experiments.prepare); see vision/data/sources.py.
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
  # Names for sources that carry none (IDX files). Folder/CSV/Label Studio sources: when set,
  # the class order, and every label in the data must be one of them; others give their own.
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
  # Early stopping (vision/train/early_stopping.py): stop after this many evaluations in a row
  # without an improvement of best_metric by more than early_stopping_min_delta, then test the
  # best checkpoint. None trains for the whole schedule.
  c.train.early_stopping_patience = ml_collections.config_dict.placeholder(int)
  c.train.early_stopping_min_delta = 0.0
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

  # What the model predicts (vision/tasks/): 'auto' (multi_label for multi-label data, else
  # classification), 'classification', 'multi_label' or 'multi_task'.
  c.task = ml_collections.ConfigDict()
  c.task.name = "auto"
  # multi_task: the heads, named by you, each a group of the keys in `head_defaults()`:
  #   config.task.heads = {"class": {}, "garment": {"source": "map:groups.json"}}
  c.task.heads = ml_collections.ConfigDict()
  # multi_task: 'fixed' (sum of loss_weight × head loss) or 'uncertainty' (Kendall et al. 2018:
  # each head's loss weighted by a learned homoscedastic uncertainty).
  c.task.weighting = "fixed"

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

  # Pruning (vision/compress/prune.py): gradual magnitude pruning, Zhu & Gupta 2017.
  c.prune = ml_collections.ConfigDict()
  # Target fraction of zero weights among the prunable ones; 0 turns pruning off.
  c.prune.sparsity = 0.0
  # 'unstructured' (single weights) or 'channel' (whole conv output channels, by L1 norm;
  # experiments.shrink then rebuilds the model narrower).
  c.prune.granularity = "unstructured"
  # 'global' (one ranking across layers) or 'layer' (each layer to the target).
  c.prune.scope = "global"
  # 'polynomial': the sparsity rises cubically from `start` to `end` (fractions of training);
  # masks are recomputed every `update_every` steps in between and stay fixed after `end`.
  # 'one_shot': the whole target at `start` (magnitudes then), fixed from there on.
  c.prune.schedule = "polynomial"
  c.prune.start = 0.1
  c.prune.end = 0.7
  c.prune.update_every = 50
  # Regexes of parameter paths ("stages.1.conv.kernel") never pruned; None: the first
  # convolution and the head.
  c.prune.exclude = ml_collections.config_dict.placeholder(tuple)

  # Quantization (vision/compress/quant.py, Qwix): 'none', 'qat' (int8 simulated in
  # training, ranges learned for export) or 'ptq' (float training, int8 calibrated at export).
  c.quant = ml_collections.ConfigDict()
  c.quant.mode = "none"
  c.quant.weight_bits = 8
  c.quant.activation_bits = 8

  c.wandb = ml_collections.ConfigDict()
  c.wandb.project = ml_collections.config_dict.placeholder(str)
  c.wandb.entity = ml_collections.config_dict.placeholder(str)
  c.wandb.name = ml_collections.config_dict.placeholder(str)
  c.wandb.group = ml_collections.config_dict.placeholder(str)
  # None: WANDB_MODE, else online when logged in, else offline.
  c.wandb.mode = ml_collections.config_dict.placeholder(str)
  return c


def head_defaults() -> ml_collections.ConfigDict:
  """The keys of one multi-task head, `config.task.heads.NAME`, with their defaults."""
  h = ml_collections.ConfigDict()
  # 'classification' (softmax) or 'multi_label' (sigmoids; the dataset's multi-hot labels).
  h.type = "classification"
  # Where the labels come from: 'label' (the dataset's), 'map:FILE.json' (a JSON object
  # {class: group} over the dataset's classes) or 'column:NAME' (another label column of a
  # CSV prepared by experiments.prepare). See vision/tasks/labels.py.
  h.source = "label"
  # Outputs of the head; None: the number of classes of its source.
  h.num_classes = ml_collections.config_dict.placeholder(int)
  # This head's weight in the summed objective.
  h.loss_weight = 1.0
  return h


HEAD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def add_head(config: ml_collections.ConfigDict, name: str, **keys: Any) -> ml_collections.ConfigDict:
  """Adds the multi-task head `name` with every key of `head_defaults()` (`keys` override them).

      config.task.name = "multi_task"
      add_head(config, "class")
      add_head(config, "garment", source="map:configs/fashion_mnist_garment.json")

  A head made this way accepts `--config.task.heads.NAME.KEY=...` for every key.
  """
  _check_head_name(name, "task.heads.")
  head = head_defaults()
  for key, value in keys.items():
    if key not in head:
      raise _unknown_key(head, key, f"task.heads.{name}.")
    head[key] = value
  config.task.heads[name] = head
  return head


def use_fashion_mnist(config: ml_collections.ConfigDict) -> None:
  """Points `config.data` at Fashion-MNIST: Debian's offline copy, else TFDS (downloads)."""
  if os.path.isdir(DEBIAN_FASHION_MNIST):
    config.data.source = f"idx:{DEBIAN_FASHION_MNIST}"
    config.data.class_names = FASHION_MNIST_CLASSES
  else:
    print(f"{DEBIAN_FASHION_MNIST} not found (Debian package dataset-fashion-mnist); "
          "using TFDS fashion_mnist instead, which downloads it when online", file=sys.stderr)
    config.data.source = "tfds:fashion_mnist"


def from_file(path: str | os.PathLike, arg: str | None = None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of a config file, as `--config=PATH:ARG` reads it.

      base = config_lib.from_file(pathlib.Path(__file__).with_name("fashion_mnist.py"), "smoke")

  For configs built on another one (a sweep's or a multi-task variant's base recipe).
  """
  path = pathlib.Path(path)
  spec = importlib.util.spec_from_file_location(f"config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


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
    "prune.granularity": ("unstructured", "channel"),
    "prune.scope": ("global", "layer"),
    "prune.schedule": ("polynomial", "one_shot"),
    "quant.mode": ("none", "qat", "ptq"),
    "task.name": ("auto", "classification", "multi_label", "multi_task"),
    "task.weighting": ("fixed", "uncertainty"),
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
  """Raises ConfigError for a `--config.a.b=...` override naming no known key.

  Under `task.heads` any head name is accepted (the user names heads), and the key
  after it must be one of `head_defaults()`.
  """
  for path in paths:
    group, prefix = defaults(), ""
    for key in path.split("."):
      if prefix == "task.heads.":
        _check_head_name(key, prefix)
        group, prefix = head_defaults(), f"{prefix}{key}."
        continue
      if not isinstance(group, ml_collections.ConfigDict) or key not in group:
        raise _unknown_key(group, key, prefix)
      group, prefix = group[key], f"{prefix}{key}."


def _check_head_name(name: str, prefix: str) -> None:
  if not HEAD_NAME.match(name):
    raise ConfigError(f"config key '{prefix}{name}': a head name is a letter, then letters, "
                      "digits or '_' (it names metrics, report folders and exported outputs)")


def _merge_checked(target: ml_collections.ConfigDict, source: Any, prefix: str) -> None:
  for key, value in source.items():
    path = f"{prefix}{key}"
    if prefix == "task.heads.":  # user-named heads, each checked against head_defaults()
      _check_head_name(key, prefix)
      if not isinstance(value, (ml_collections.ConfigDict, dict)):
        raise ConfigError(f"config key '{path}' must be a group of keys (a head), got {value!r}")
      with target.unlocked():
        target[key] = head_defaults()
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
  if c.model.name not in MODELS:
    raise ConfigError(
        f"config key 'model.name' is {c.model.name!r}; known models: {', '.join(sorted(MODELS))}")
  if not 0 <= c.train.label_smoothing < 1:
    raise ConfigError(
        f"config key 'train.label_smoothing' must be in [0, 1), got {c.train.label_smoothing}")
  _check_augmentation(c.data)
  _check_early_stopping(c.train)
  if not c.train.focal_gamma >= 0:
    raise ConfigError(f"config key 'train.focal_gamma' must be >= 0, got {c.train.focal_gamma}")
  if c.train.imbalance_threshold is not None and not c.train.imbalance_threshold >= 1:
    raise ConfigError("config key 'train.imbalance_threshold' must be >= 1 (a largest/smallest "
                      f"class ratio) or None, got {c.train.imbalance_threshold}")
  _check_transfer(c)
  _check_task(c)
  if not c.distill.temperature > 0:
    raise ConfigError(
        f"config key 'distill.temperature' must be > 0, got {c.distill.temperature}")
  if not 0 <= c.distill.hard_label_weight <= 1:
    raise ConfigError(f"config key 'distill.hard_label_weight' must be in [0, 1], "
                      f"got {c.distill.hard_label_weight}")
  _check_compression(c)
  if c.wandb.mode is not None and c.wandb.mode.strip().lower() not in _WANDB_ACCEPTED:
    raise ConfigError(f"config key 'wandb.mode' is {c.wandb.mode!r}; expected one of "
                      f"{', '.join(WANDB_MODES)} (or None: $WANDB_MODE, else online when logged "
                      "in, else offline)")
  if len(c.data.mean) != len(c.data.std):
    raise ConfigError("config keys 'data.mean' and 'data.std' must have the same length")


def _check_early_stopping(train: ml_collections.ConfigDict) -> None:
  patience = train.early_stopping_patience
  if patience is not None and not patience >= 1:
    raise ConfigError("config key 'train.early_stopping_patience' must be >= 1 (evaluations "
                      f"without improvement) or None (off), got {patience}")
  if not train.early_stopping_min_delta >= 0:
    raise ConfigError("config key 'train.early_stopping_min_delta' must be >= 0, got "
                      f"{train.early_stopping_min_delta}")


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


def _check_compression(c: ml_collections.ConfigDict) -> None:
  if not 0 <= c.prune.sparsity < 1:
    raise ConfigError(f"config key 'prune.sparsity' must be in [0, 1), got {c.prune.sparsity}")
  if not 0 <= c.prune.start <= c.prune.end <= 1:
    raise ConfigError("config keys 'prune.start' and 'prune.end' must satisfy "
                      f"0 <= start <= end <= 1 (fractions of training), got {c.prune.start}, "
                      f"{c.prune.end}")
  if not c.prune.update_every >= 1:
    raise ConfigError(f"config key 'prune.update_every' must be >= 1, got {c.prune.update_every}")
  for key in ("weight_bits", "activation_bits"):
    if c.quant[key] not in (4, 8):
      raise ConfigError(f"config key 'quant.{key}' must be 4 or 8, got {c.quant[key]!r}")
def _check_task(c: ml_collections.ConfigDict) -> None:
  heads = c.task.heads
  if c.task.name != "multi_task":
    if heads:
      raise ConfigError(f"config key 'task.heads' is set ({', '.join(heads)}) but task.name is "
                        f"{c.task.name!r}; set task.name='multi_task'")
    return
  if not heads:
    raise ConfigError("config key 'task.heads' is empty: task.name='multi_task' needs at least "
                      "one head, e.g. task.heads = {'class': {}, 'group': {'source': "
                      "'map:groups.json'}}")
  if c.model.num_classes is not None:
    raise ConfigError("config key 'model.num_classes' must stay unset for task.name='multi_task' "
                      "(each head's size is task.heads.NAME.num_classes)")
  for name, head in heads.items():
    key = f"task.heads.{name}"
    if head.type not in ("classification", "multi_label"):
      raise ConfigError(f"config key '{key}.type' is {head.type!r}; expected one of "
                        "classification, multi_label")
    kind, _, argument = head.source.partition(":")
    if head.source != "label" and not (kind in ("map", "column") and argument):
      raise ConfigError(f"config key '{key}.source' is {head.source!r}; expected 'label', "
                        "'map:FILE.json' or 'column:NAME'")
    if not head.loss_weight > 0:
      raise ConfigError(f"config key '{key}.loss_weight' must be > 0, got {head.loss_weight}")
    if head.num_classes is not None and head.num_classes < 1:
      raise ConfigError(f"config key '{key}.num_classes' must be >= 1, got {head.num_classes}")


def _check_environment(c: ml_collections.ConfigDict) -> None:
  for path in ("train.batch_size", "train.eval_batch_size"):
    group, key = path.split(".")
    if c[group][key] % jax.device_count():
      raise ConfigError(
          f"config key '{path}'={c[group][key]} is not divisible by the "
          f"{jax.device_count()} devices; use a multiple of {jax.device_count()}")
  check_source_exists(c.data.source)
  env_mode = os.environ.get("WANDB_MODE")
  if c.wandb.mode is None and env_mode and env_mode.strip().lower() not in _WANDB_ACCEPTED:
    raise ConfigError(f"environment variable WANDB_MODE is {env_mode!r}; expected one of "
                      f"{', '.join(WANDB_MODES)}")
  if c.model.init_from and not os.path.isfile(os.path.join(c.model.init_from, "model_card.json")):
    raise ConfigError(
        f"config key 'model.init_from': {c.model.init_from!r} is not a model directory "
        "(no model_card.json; expected a training workdir or an experiments.import_weights --out)")


def check_source_exists(source: str) -> None:
  """Raises ConfigError unless `source` ('idx:PATH', 'folder:PATH', ...) names existing data."""
  kind, sep, location = source.partition(":")
  if not sep or kind not in ("idx", "folder", "csv", "labelstudio", "tfds", "prepared"):
    raise ConfigError(
        f"config key 'data.source' is {source!r}; expected 'idx:PATH', 'folder:PATH', "
        "'csv:FILE', 'labelstudio:FILE', 'tfds:NAME' or 'prepared:DIR'")
  if kind in ("csv", "labelstudio") and not os.path.isfile(location):
    raise ConfigError(f"config key 'data.source': file {location!r} does not exist")
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


def changed_keys(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> list[str]:
  """The keys of `config` that differ from the earlier run's `workdir/config.json` (read only)."""
  path = pathlib.Path(workdir) / RESOLVED_CONFIG
  if not path.exists():
    return []
  try:
    old = _flatten(json.loads(path.read_text()))
  except json.JSONDecodeError as error:
    raise ConfigError(f"{path} is not valid JSON ({error}); it was not written by this "
                      "version of experiments.train: use a new --workdir") from None
  return sorted(k for k, v in _flatten(config.to_dict()).items() if old.get(k, v) != v)


def save_resolved(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> list[str]:
  """Writes `workdir/config.json`; returns the keys that differ from an earlier run's."""
  changed = changed_keys(config, workdir)
  write_text_atomically(pathlib.Path(workdir) / RESOLVED_CONFIG,
                        json.dumps(config.to_dict(), indent=2, default=list))
  return changed


def load_resolved(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
  """The validated config a run in `workdir` used."""
  path = pathlib.Path(workdir) / RESOLVED_CONFIG
  if not path.exists():
    raise ConfigError(f"{path} does not exist: --workdir must be a directory written by "
                      "experiments.train")
  try:
    resolved = json.loads(path.read_text())
  except json.JSONDecodeError as error:
    raise ConfigError(f"{path} is not valid JSON ({error}); it was not written by "
                      "experiments.train (or was damaged)") from None
  return validate(ml_collections.ConfigDict(resolved), check_environment=False)
