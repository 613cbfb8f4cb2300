"""Copy PyTorch state dicts into the zoo's NNX models.

    model = create_model("resnet50", ModelOptions(num_classes=1000), rngs=nnx.Rngs(0))
    import_torch_state(model, "resnet50", state_dict, source="torchvision")

Each architecture family registers, per model name, a function that copies a
state dict (names → NumPy arrays, as torchvision / timm / Hugging Face write
them) into a freshly created model; `import_torch_state` dispatches to it.
The helpers below convert PyTorch layouts to Flax ones and check every shape.
"""

from __future__ import annotations

from typing import Callable, Mapping

from flax import nnx
import numpy as np

StateDict = Mapping[str, np.ndarray]
Importer = Callable[[nnx.Module, StateDict, str], None]
TORCH_IMPORTERS: dict[str, Importer] = {}


class WeightImportError(ValueError):
  """A state dict that does not fit the model (a missing, extra or mis-shaped tensor)."""


def conv_kernel(weight: np.ndarray) -> np.ndarray:
  """PyTorch conv weight [out, in/groups, kh, kw] → Flax [kh, kw, in/groups, out]."""
  return np.transpose(weight, (2, 3, 1, 0))


def linear_kernel(weight: np.ndarray) -> np.ndarray:
  """PyTorch linear weight [out, in] → Flax [in, out]."""
  return np.transpose(weight)


def assign(variable: nnx.Variable, value: np.ndarray, name: str) -> None:
  """Set `variable` to `value`, failing with the tensor's name on a shape mismatch."""
  value = np.asarray(value)
  if tuple(variable.shape) != value.shape:
    raise WeightImportError(
        f"tensor {name!r} has shape {value.shape}, the model expects {tuple(variable.shape)}")
  variable[...] = value.astype(variable.dtype)


def import_torch_state(model: nnx.Module, name: str, state_dict: StateDict, source: str) -> None:
  if name not in TORCH_IMPORTERS:
    raise WeightImportError(
        f"no PyTorch importer for model {name!r}; importable: {', '.join(sorted(TORCH_IMPORTERS))}")
  TORCH_IMPORTERS[name](model, state_dict, source)
