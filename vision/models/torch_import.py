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
import jax.numpy as jnp
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
  # A whole new array: `variable[...] = ...` would compile a scatter per shape, and a new
  # array also works on abstract models (`nnx.eval_shape`).
  variable.set_value(jnp.asarray(value, variable.dtype))


def import_torch_state(model: nnx.Module, name: str, state_dict: StateDict, source: str) -> None:
  if name not in TORCH_IMPORTERS:
    raise WeightImportError(
        f"no PyTorch importer for model {name!r}; importable: {', '.join(sorted(TORCH_IMPORTERS))}")
  TORCH_IMPORTERS[name](model, state_dict, source)


def adapt_input_kernel(weight: np.ndarray, in_channels: int) -> np.ndarray:
  """A first-layer PyTorch kernel [out, c, kh, kw] for `in_channels` inputs instead of c.

  Grey (1 channel) sums the RGB filters, so a grey image repeated to RGB gives
  the same activations; other counts tile the filters and rescale (as timm does).
  """
  have = weight.shape[1]
  if have == in_channels:
    return weight
  if in_channels == 1:
    return weight.sum(axis=1, keepdims=True)
  repeats = -(-in_channels // have)
  return np.tile(weight, (1, repeats, 1, 1))[:, :in_channels] * (have / in_channels)


class TorchState:
  """A state dict being copied into a model: every tensor is used once, leftovers are an error.

      tensors = TorchState(state_dict, source="torchvision")
      tensors.conv(model.stem.conv, "features.0.0")
      tensors.norm(model.stem.norm, "features.0.1")
      tensors.finish()                    # WeightImportError if tensors were left unused
  """

  # Bookkeeping tensors that carry no weights.
  IGNORED_SUFFIXES = ("num_batches_tracked",)

  def __init__(self, state_dict: StateDict, source: str):
    self.tensors = dict(state_dict)
    self.source = source
    self.used: set[str] = set()

  def take(self, name: str) -> np.ndarray:
    if name not in self.tensors:
      raise WeightImportError(
          f"the checkpoint has no tensor {name!r}, which a {self.source!r} checkpoint of this "
          "architecture holds: check --arch and --source")
    self.used.add(name)
    return np.asarray(self.tensors[name], np.float32)

  def conv(self, module: nnx.Conv, prefix: str, *, first: bool = False) -> None:
    """A Conv2d; `first` adapts the input channels of a stem (see `adapt_input_kernel`)."""
    weight = self.take(f"{prefix}.weight")
    if first:
      weight = adapt_input_kernel(weight, module.kernel.shape[2])
    assign(module.kernel, conv_kernel(weight), f"{prefix}.weight")
    if module.bias is not None:
      assign(module.bias, self.take(f"{prefix}.bias"), f"{prefix}.bias")

  def norm(self, module: nnx.BatchNorm, prefix: str) -> None:
    assign(module.scale, self.take(f"{prefix}.weight"), f"{prefix}.weight")
    assign(module.bias, self.take(f"{prefix}.bias"), f"{prefix}.bias")
    assign(module.mean, self.take(f"{prefix}.running_mean"), f"{prefix}.running_mean")
    assign(module.var, self.take(f"{prefix}.running_var"), f"{prefix}.running_var")

  def linear(self, module: nnx.Linear, prefix: str) -> None:
    assign(module.kernel, linear_kernel(self.take(f"{prefix}.weight")), f"{prefix}.weight")
    if module.bias is not None:
      assign(module.bias, self.take(f"{prefix}.bias"), f"{prefix}.bias")

  def layer_norm(self, module: nnx.LayerNorm, prefix: str) -> None:
    assign(module.scale, self.take(f"{prefix}.weight"), f"{prefix}.weight")
    assign(module.bias, self.take(f"{prefix}.bias"), f"{prefix}.bias")

  def finish(self) -> None:
    unused = [name for name in self.tensors
              if name not in self.used and not name.endswith(self.IGNORED_SUFFIXES)]
    if unused:
      raise WeightImportError(
          f"{len(unused)} tensors of the checkpoint do not fit the model (first: {unused[0]!r}): "
          "check --arch and --source")


def check_source(name: str, source: str, sources: tuple[str, ...]) -> None:
  if source not in sources:
    raise WeightImportError(
        f"model {name!r} imports from --source={'|'.join(sources)}, not {source!r}")
