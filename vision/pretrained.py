"""PyTorch checkpoints → model directories: read a state dict, import it, write checkpoint + card.

    card = import_checkpoint("mobilenet_v2", "torchvision", "mobilenet_v2-b0353104.pth",
                             "models/mobilenet_v2")
    model, card = vision.checkpoint.load_model("models/mobilenet_v2")

State dicts are read from `.pth`/`.pt`/`.bin` (torch.load with weights_only=True;
needs torch) or `.safetensors` (no torch). The model card records the
preprocessing the weights were trained with (`PREPROCESSING`, per architecture
and source: input size, resize size, filter, mean/std), so `experiments.predict`
feeds the model exactly what PyTorch's evaluation transforms would.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import pathlib
from typing import Sequence

from flax import nnx
import numpy as np

from vision.checkpoint import ModelCard, write_model_dir
from vision.models import ModelOptions, create_model
from vision.models.torch_import import TORCH_IMPORTERS, WeightImportError, import_torch_state

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TensorFlow-trained ports (EfficientNet-Lite): inputs scaled to [-1, 1].
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """How the weights' authors evaluated: Resize(resize_size) + CenterCrop(image_size) + normalise."""
  image_size: int = 224
  resize_size: int | None = 256
  interpolation: str = "bilinear"
  mean: tuple[float, ...] = IMAGENET_MEAN
  std: tuple[float, ...] = IMAGENET_STD


# (arch, source) → preprocessing; (arch, "*") for every source. Unlisted: `Preprocessing()`.
PREPROCESSING: dict[tuple[str, str], Preprocessing] = {
    # torchvision's EfficientNet weights' transforms (crop, resize; bicubic).
    **{(f"efficientnet_b{i}", "*"): Preprocessing(crop, resize, "bicubic")
       for i, (crop, resize) in enumerate(((224, 256), (240, 255), (288, 288), (300, 320),
                                           (380, 384), (456, 456), (528, 528), (600, 600)))},
    # Google's EfficientNet-Lite (TF): inputs in [-1, 1], timm's crop fraction 0.882 and up.
    **{(f"efficientnet_lite{i}", "*"): Preprocessing(size, int(size / crop), "bicubic",
                                                     INCEPTION_MEAN, INCEPTION_STD)
       for i, (size, crop) in enumerate(((224, 0.882), (240, 0.882), (260, 0.890),
                                         (280, 0.904), (300, 0.920)))},
}


def preprocessing(arch: str, source: str) -> Preprocessing:
  return PREPROCESSING.get((arch, source)) or PREPROCESSING.get((arch, "*")) or Preprocessing()


def imagenet_class_names() -> tuple[str, ...]:
  """The 1000 ImageNet-1k class names in the usual index order (torchvision's)."""
  text = importlib.resources.files("vision.models").joinpath("imagenet1k_classes.txt").read_text()
  return tuple(text.splitlines())


def _first_line(error: BaseException) -> str:
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return lines[0] if lines else type(error).__name__


def _from_pickle(path: pathlib.Path) -> dict:
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise WeightImportError(
        f"reading {path} needs torch (uv pip install 'vision[torch]'); "
        ".safetensors files need no torch") from error
  try:
    loaded = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as error:  # pickle, zip and weights_only errors all mean "not a state dict"
    raise WeightImportError(
        f"{path} is not a PyTorch state dict: {_first_line(error)}") from error
  return {name: tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()
          for name, tensor in _unwrap(loaded, path).items() if hasattr(tensor, "numpy")}


def _unwrap(loaded, path: pathlib.Path) -> dict:
  # Training scripts often save {'state_dict': ...} or {'model': ...}.
  for key in ("state_dict", "model", "model_state_dict"):
    if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
      loaded = loaded[key]
  if not isinstance(loaded, dict):
    raise WeightImportError(f"{path} holds a {type(loaded).__name__}, not a state dict")
  return loaded


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Tensor name → NumPy array; a `module.` prefix (DataParallel) is dropped."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"checkpoint file {path} does not exist")
  if path.suffix == ".safetensors":
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    try:
      tensors = load_file(path)
    except Exception as error:  # safetensors raises its own error types
      raise WeightImportError(
          f"{path} is not a safetensors file: {_first_line(error)}") from error
  else:
    tensors = _from_pickle(path)
  return {name.removeprefix("module."): np.asarray(value) for name, value in tensors.items()}


def infer_num_classes(state_dict: dict[str, np.ndarray]) -> int:
  """The classifier's output size: torchvision, timm and HF save the classifier last."""
  matrices = [value for value in state_dict.values() if value.ndim == 2]
  if not matrices:
    raise WeightImportError("the checkpoint has no classifier matrix: pass --num_classes")
  return int(matrices[-1].shape[0])


def import_checkpoint(arch: str, source: str, checkpoint: str | os.PathLike,
                      out: str | os.PathLike, *, num_classes: int | None = None,
                      class_names: Sequence[str] | None = None,
                      in_channels: int = 3) -> ModelCard:
  """Imports a PyTorch checkpoint of `arch` and writes `out` as a model directory."""
  if arch not in TORCH_IMPORTERS:
    raise WeightImportError(
        f"no PyTorch importer for --arch={arch}; importable: {', '.join(sorted(TORCH_IMPORTERS))}")
  if pathlib.Path(out).exists() and any(pathlib.Path(out).iterdir()):
    raise FileExistsError(f"--out directory {out} is not empty; give a new directory")
  state_dict = read_state_dict(checkpoint)
  num_classes = num_classes or infer_num_classes(state_dict)
  if class_names is None:
    class_names = (imagenet_class_names() if num_classes == 1000
                   else tuple(str(i) for i in range(num_classes)))
  if len(class_names) != num_classes:
    raise WeightImportError(f"{len(class_names)} class names for {num_classes} classes")
  prep = preprocessing(arch, source)
  options = ModelOptions(num_classes=num_classes, in_channels=in_channels,
                         image_size=prep.image_size)
  model = create_model(arch, options, rngs=nnx.Rngs(0))
  import_torch_state(model, arch, state_dict, source)
  model_options = {k: v for k, v in dataclasses.asdict(options).items()
                   if k not in ("num_classes", "in_channels", "image_size")}
  mean, std = prep.mean, prep.std
  if in_channels != len(mean):
    mean, std = (float(np.mean(mean)),) * in_channels, (float(np.mean(std)),) * in_channels
  card = ModelCard(arch=arch, num_classes=num_classes, class_names=tuple(class_names),
                   image_size=prep.image_size, channels=in_channels, mean=mean, std=std,
                   model_options=model_options, resize_size=prep.resize_size,
                   interpolation=prep.interpolation)
  write_model_dir(out, model, card)
  return card
