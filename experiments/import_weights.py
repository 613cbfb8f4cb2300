"""Imports a PyTorch checkpoint into a model directory that every command reads.

    python -m experiments.import_weights --arch=mobilenet_v2 --source=torchvision \
        --checkpoint=mobilenet_v2-b0353104.pth --out=models/mobilenet_v2
    python -m experiments.predict --workdir=models/mobilenet_v2 photo.jpg

--checkpoint is a `.pth`/`.pt`/`.bin` state dict (needs torch) or `.safetensors`.
--source names the tensor layout (torchvision, timm, hf, or a family's own, see
README "Model zoo"). The classifier size is read from the checkpoint; 1000
classes get the ImageNet-1k names. DIR gets an Orbax checkpoint and model_card.json.
"""

from __future__ import annotations

import pathlib

from absl import flags

from experiments import common
from vision import pretrained
from vision.models.torch_import import WeightImportError

_ARCH = flags.DEFINE_string("arch", None, "Model name in the registry, e.g. mobilenet_v2.")
_SOURCE = flags.DEFINE_string(
    "source", "torchvision",
    "Tensor layout of the checkpoint: torchvision | timm | hf (| a family's own, see README).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "PyTorch state dict: .pth/.bin/.safetensors.")
_OUT = flags.DEFINE_string("out", None, "The model directory to write (new or empty).")
_NUM_CLASSES = flags.DEFINE_integer(
    "num_classes", None, "Classifier size; default: read from the checkpoint.")
_CLASS_NAMES = flags.DEFINE_string(
    "class_names", None, "A text file with one class name per line (default: ImageNet-1k "
    "names for 1000 classes, else the indices).")
_IN_CHANNELS = flags.DEFINE_integer(
    "in_channels", 3, "Input channels; 1 sums the stem's RGB filters (grey images).")
flags.mark_flags_as_required(["arch", "checkpoint", "out"])


def _class_names() -> tuple[str, ...] | None:
  if _CLASS_NAMES.value is None:
    return None
  path = pathlib.Path(_CLASS_NAMES.value)
  if not path.is_file():
    raise FileNotFoundError(f"--class_names file {path} does not exist")
  return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())


def main(argv: list[str]) -> None:
  common.reject_extra_arguments(argv)
  try:
    card = pretrained.import_checkpoint(
        _ARCH.value, _SOURCE.value, _CHECKPOINT.value, _OUT.value,
        num_classes=_NUM_CLASSES.value, class_names=_class_names(),
        in_channels=_IN_CHANNELS.value)
  except (WeightImportError, FileExistsError) as error:
    common.fail(f"{_CHECKPOINT.value}: {error}" if isinstance(error, WeightImportError)
                else str(error))
  print(f"wrote {_OUT.value}: {card.arch}, {card.num_classes} classes, "
        f"{card.image_size}px input (resize {card.resize_size}, {card.interpolation})")


if __name__ == "__main__":
  common.run(main)
