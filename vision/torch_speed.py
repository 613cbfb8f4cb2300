"""PyTorch's train step and inference on the framework's twin models, in each CPU setting.

    step = torch_train_step("resnet18", TorchInput(128, 3, 32, 10), "compile_channels_last")
    step()                                   # one SGD step; the first call compiles
    forward = torch_inference("resnet50", TorchInput(32, 3, 224, 1000), "channels_last")
    forward(images)                          # float32 NCHW tensor → logits

The speed comparisons use the fastest PyTorch, not only its default: on a CPU,
`channels_last` memory format (NHWC, what oneDNN's convolutions prefer) and
`torch.compile` (TorchInductor: fused C++ kernels; it needs a C++ compiler,
which `.ci/setup` installs) are each faster on some models. The four settings
(`VARIANTS`) are eager NCHW, eager channels_last, compiled, and compiled
channels_last. Needs the `torch` extra (`uv pip install '.[torch]'`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
  import torch

# torch is imported when a model is made, so that this module (and the benchmark, which
# names the settings) imports without the `torch` extra.
VARIANTS = ("eager", "channels_last", "compile", "compile_channels_last")


@dataclasses.dataclass(frozen=True)
class TorchInput:
  """What a twin is built for and fed: batch, channels, square image side, classes."""
  batch_size: int
  channels: int
  image_size: int
  num_classes: int
  widths: Sequence[int] = (32, 64)
  hidden: int = 128


def check_variants(variants: Sequence[str]) -> tuple[str, ...]:
  unknown = [v for v in variants if v not in VARIANTS]
  if unknown:
    raise ValueError(f"unknown PyTorch setting(s) {', '.join(unknown)}; expected some of "
                     f"{', '.join(VARIANTS)}")
  return tuple(variants)


def _model(name: str, spec: TorchInput, variant: str, train: bool) -> tuple[torch.nn.Module,
                                                                             Callable]:
  """The twin in train or eval mode, its memory format set, and the callable to run it."""
  import torch  # pylint: disable=import-outside-toplevel
  from vision.torch_reference import make_torch_model  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  model = make_torch_model(name, spec.num_classes, spec.channels, spec.image_size,
                           widths=spec.widths, hidden=spec.hidden)
  model.train(train)
  if variant.endswith("channels_last"):
    model = model.to(memory_format=torch.channels_last)
  # Static shapes: each batch size (32, then 1 for latency) gets its own specialised graph.
  forward = torch.compile(model, dynamic=False) if variant.startswith("compile") else model
  return model, forward


def _images(spec: TorchInput, variant: str, batch_size: int | None = None) -> "torch.Tensor":
  import torch  # pylint: disable=import-outside-toplevel
  images = torch.randn(batch_size or spec.batch_size, spec.channels, spec.image_size,
                       spec.image_size)
  if variant.endswith("channels_last"):
    images = images.contiguous(memory_format=torch.channels_last)
  return images


def torch_train_step(name: str, spec: TorchInput, variant: str = "eager") -> Callable[[], None]:
  """One SGD-with-momentum step of the twin on a fixed random batch, as a blocking callable.

  Raises ValueError when the model has no PyTorch twin.
  """
  import torch  # pylint: disable=import-outside-toplevel
  check_variants([variant])
  model, forward = _model(name, spec, variant, train=True)
  optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
  images = _images(spec, variant)
  labels = torch.randint(0, spec.num_classes, (spec.batch_size,))

  def step() -> None:
    optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(forward(images), labels)
    loss.backward()
    optimizer.step()

  return step


def torch_inference(name: str, spec: TorchInput,
                    variant: str = "eager") -> Callable[["torch.Tensor"], "torch.Tensor"]:
  """The twin's eval-mode forward under `torch.inference_mode`: images [B, C, H, W] → logits."""
  import torch  # pylint: disable=import-outside-toplevel
  check_variants([variant])
  _, forward = _model(name, spec, variant, train=False)

  def predict(images: "torch.Tensor") -> "torch.Tensor":
    with torch.inference_mode():
      return forward(images)

  return predict


def sample_images(spec: TorchInput, variant: str, batch_size: int) -> "torch.Tensor":
  """Random float32 images in the memory format `variant` feeds its model."""
  return _images(spec, variant, batch_size)


def reset_compiled() -> None:
  """Drops dynamo's compiled graphs (between models: its per-code cache has a size limit)."""
  import torch  # pylint: disable=import-outside-toplevel
  torch._dynamo.reset()  # pylint: disable=protected-access
