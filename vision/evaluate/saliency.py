"""Saliency maps: Grad-CAM, Grad-CAM++, attention rollout and integrated gradients.

    explainer = Explainer(model, "gradcam")                 # model in eval mode
    maps = explainer(images, targets)                       # [B, S, S] float32 in [0, 1]
    full = to_image_frame(maps[0], height, width, spec)     # the photo's own H×W, crop → 0
    Image.fromarray(overlay(photo, full)).save("cat.png")

Methods, all computed under `jax.jit` for a batch of normalised images
[B, S, S, C] (what the model is fed) and one target class per image:

  * `gradcam` (Selvaraju et al. 2017): the ReLU of the feature maps A_k of the
    last convolutional stage weighted by the spatial mean of d logit_c / dA_k;
  * `gradcam_pp` (Chattopadhay et al. 2018): the same maps weighted by the
    positive gradients with Grad-CAM++'s per-location coefficients (in the
    closed form pytorch-grad-cam uses);
  * `rollout` (Abnar & Zuidema 2020), ViTs: each block's attention averaged over
    heads, the residual added (0.5·A + 0.5·I, rows renormalised), multiplied
    through the blocks; the class token's row over the patches. It does not
    depend on the target class;
  * `integrated_gradients` (Sundararajan et al. 2017), any model: (x - x') times
    the mean gradient along the straight path from the baseline x' (a black
    image) to x, `steps` midpoint samples, summed over channels; the positive part
    (evidence for the target class: the absolute value would also light up the
    evidence against it, another class's).

The convolutional stage is found by layer group, so a new family needs no code:
of the paths in `model.layer_groups()` (depth order, the head left out) the
deepest whose output is a feature map [B, h, w, C] with h·w > 1 (pytorch-grad-cam
picks the same layers by hand: ResNet's last block, MobileNet's last 1×1 conv,
ConvNeXt's last stage). Every map is upsampled bilinearly to S×S and scaled to
[0, 1] per image (minus its minimum, over its maximum), as pytorch-grad-cam does.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from PIL import Image

from vision.compress import quant
from vision.data.pipeline import ImageSpec, resize_crop_geometry
from vision.errors import ConfigError

METHODS = ("gradcam", "gradcam_pp", "rollout", "integrated_gradients")
# Methods whose map depends on the target class (rollout's does not).
TARGETED = ("gradcam", "gradcam_pp", "integrated_gradients")
IG_STEPS = 32
_EPS = 1e-7

# Functions (path, output) -> output that taps apply while a forward pass is traced.
_HOOKS: list[Callable[[str, jax.Array], jax.Array]] = []


class _Tap(nnx.Module):
  """A transparent wrapper of a submodule whose output the active hooks may read or replace."""

  def __init__(self, inner: nnx.Module, path: str):
    self.inner = inner
    self.path = path

  def __call__(self, *args, **kwargs):
    output = self.inner(*args, **kwargs)
    for hook in _HOOKS:
      output = hook(self.path, output)
    return output


@contextlib.contextmanager
def _hooked(hook: Callable[[str, jax.Array], jax.Array]) -> Iterator[None]:
  _HOOKS.append(hook)
  try:
    yield
  finally:
    _HOOKS.remove(hook)


def _parent(model: nnx.Module, path: str) -> tuple[object, str]:
  *parents, last = path.split(".")
  node = model
  for name in parents:
    node = node[int(name)] if name.isdigit() else getattr(node, name)
  return node, last


def _get(model: nnx.Module, path: str) -> nnx.Module:
  node, last = _parent(model, path)
  return node[int(last)] if last.isdigit() else getattr(node, last)


def _set(model: nnx.Module, path: str, module: nnx.Module) -> None:
  node, last = _parent(model, path)
  if last.isdigit():
    node[int(last)] = module
  else:
    setattr(node, last, module)


@contextlib.contextmanager
def tapped(model: nnx.Module, paths: Sequence[str]) -> Iterator[nnx.Module]:
  """`model` with taps at `paths` (dotted, as in `layer_groups()`), restored afterwards."""
  originals = {path: _get(model, path) for path in paths}
  try:
    for path, module in originals.items():
      _set(model, path, _Tap(module, path))
    yield model
  finally:
    for path, module in originals.items():
      _set(model, path, module)


def _candidate_paths(model: nnx.Module) -> list[str]:
  """The submodules named by the layer groups, in depth order (parameters such as a ViT's
  `pos_embed` and the last group, the head, left out)."""
  groups = model.layer_groups()[:-1]
  return [path for group in groups for path in group if isinstance(_get(model, path), nnx.Module)]


def conv_layer(model: nnx.Module, input_shape: tuple[int, int, int]) -> tuple[str, tuple]:
  """(path, output shape) of the deepest layer-group member that outputs a feature map.

  Raises ConfigError when the model has none (a ViT: use rollout or integrated gradients).
  """
  paths = _candidate_paths(model)
  shapes: dict[str, tuple] = {}

  def record(path: str, output):
    if isinstance(output, jax.Array) or hasattr(output, "shape"):
      shapes[path] = tuple(output.shape)
    return output

  with tapped(model, paths):
    graphdef, state = nnx.split(model)

    def forward(state, images):
      with _hooked(record):
        return nnx.merge(graphdef, state)(images)

    jax.eval_shape(forward, state, jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))
  spatial = [p for p in paths if len(shapes.get(p, ())) == 4 and shapes[p][1] * shapes[p][2] > 1]
  if not spatial:
    raise ConfigError(
        f"{type(model).__name__} has no convolutional feature map for Grad-CAM; use "
        "--method=rollout (Vision Transformers) or --method=integrated_gradients (any model)")
  return spatial[-1], shapes[spatial[-1]]


def _scale(maps: jax.Array, size: int) -> jax.Array:
  """[B, h, w] → [B, size, size] (bilinear), each map scaled to [0, 1]."""
  maps = jax.image.resize(maps.astype(jnp.float32), (maps.shape[0], size, size), "bilinear")
  maps = maps - maps.min(axis=(1, 2), keepdims=True)
  return maps / (maps.max(axis=(1, 2), keepdims=True) + _EPS)


def _target_scores(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """The sum over the batch of each example's target logit (its gradient is per example)."""
  return jnp.take_along_axis(logits, targets[:, None], axis=1).sum()


def cam_weights(method: str, activations: jax.Array, gradients: jax.Array) -> jax.Array:
  """Per-channel weights [B, K] of Grad-CAM or Grad-CAM++ from A and dA, both [B, h, w, K]."""
  if method == "gradcam":
    return gradients.mean(axis=(1, 2))
  # Grad-CAM++ with exp(score)'s derivatives written through the score's (pytorch-grad-cam).
  squared, cubed = gradients**2, gradients**3
  total = activations.sum(axis=(1, 2), keepdims=True)
  alpha = squared / (2 * squared + total * cubed + _EPS)
  alpha = jnp.where(gradients != 0, alpha, 0.0)
  return (jnp.maximum(gradients, 0) * alpha).sum(axis=(1, 2))


class Explainer:
  """`explainer(images [B, S, S, C] normalised, targets [B] int) -> maps [B, S, S] in [0, 1]`."""

  def __init__(self, model: nnx.Module, method: str, *, steps: int = IG_STEPS,
               baseline: np.ndarray | None = None):
    if method not in METHODS:
      raise ConfigError(f"--method={method} is not a saliency method; choose one of "
                        f"{', '.join(METHODS)}")
    self.method, self.steps = method, steps
    self._baseline = None if baseline is None else jnp.asarray(baseline, jnp.float32)
    # A QAT model is explained through its float weights: fake quantization's
    # gradient is straight-through anyway, and Qwix's interception cannot see
    # the layers the taps wrap.
    self._model = quant.float_model(model)
    self._compiled: dict[tuple, Callable] = {}

  def __call__(self, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
    images = jnp.asarray(images, jnp.float32)
    targets = jnp.asarray(targets, jnp.int32)
    key = images.shape
    if key not in self._compiled:
      self._compiled[key] = self._compile(images.shape[1:])
    return np.asarray(self._compiled[key](images, targets), np.float32)

  def _compile(self, input_shape: tuple[int, int, int]) -> Callable:
    model, size = self._model, input_shape[0]
    if self.method in ("gradcam", "gradcam_pp"):
      return self._compile_cam(model, input_shape)
    if self.method == "rollout":
      if not hasattr(model, "attention_maps"):
        raise ConfigError(f"--method=rollout needs a Vision Transformer (a model with "
                          f"attention_maps()); {type(model).__name__} has none: use "
                          "--method=gradcam or --method=integrated_gradients")
      graphdef, state = nnx.split(model)

      @jax.jit
      def rollout(state, images, targets):
        del targets  # rollout is class-agnostic
        module = nnx.merge(graphdef, state)
        return _scale(attention_rollout(module.attention_maps(images), module.grid), size)
      return lambda images, targets: rollout(state, images, targets)
    return self._compile_integrated_gradients(model, size)

  def _compile_cam(self, model: nnx.Module, input_shape) -> Callable:
    path, shape = conv_layer(model, input_shape)
    method, size = self.method, input_shape[0]
    with tapped(model, [path]):
      graphdef, state = nnx.split(model)

    @jax.jit
    def cam(state, images, targets):
      def score(delta):
        captured = []

        def hook(at: str, output):
          if at != path:
            return output
          captured.append(output)
          return output + delta
        with _hooked(hook):
          logits = nnx.merge(graphdef, state)(images)
        return _target_scores(logits, targets), captured[0]

      delta = jnp.zeros((images.shape[0], *shape[1:]), jnp.float32)
      gradients, activations = jax.grad(score, has_aux=True)(delta)
      weights = cam_weights(method, activations, gradients)
      maps = jax.nn.relu(jnp.einsum("bhwk,bk->bhw", activations.astype(jnp.float32), weights))
      return _scale(maps, size)
    return lambda images, targets: cam(state, images, targets)

  def _compile_integrated_gradients(self, model: nnx.Module, size: int) -> Callable:
    graphdef, state = nnx.split(model)
    steps, fixed_baseline = self.steps, self._baseline

    @jax.jit
    def integrated(state, images, targets):
      baseline = jnp.zeros_like(images) if fixed_baseline is None else jnp.broadcast_to(
          fixed_baseline, images.shape)
      gradient = jax.grad(lambda x: _target_scores(nnx.merge(graphdef, state)(x), targets))

      def accumulate(total, alpha):
        return total + gradient(baseline + alpha * (images - baseline)), None

      alphas = (jnp.arange(steps, dtype=jnp.float32) + 0.5) / steps
      total, _ = jax.lax.scan(accumulate, jnp.zeros_like(images), alphas)
      attributions = (images - baseline) * total / steps
      # The evidence for the target: the positive part of each pixel's attribution.
      return _scale(jax.nn.relu(attributions.sum(axis=-1)), size)
    return lambda images, targets: integrated(state, images, targets)


def attention_rollout(maps: jax.Array, grid: tuple[int, int]) -> jax.Array:
  """Abnar & Zuidema's rollout of attention weights [L, B, heads, T, T] (token 0: the class
  token) → where the class token draws from, [B, *grid] (unscaled)."""
  attention = maps.astype(jnp.float32).mean(axis=2)            # [L, B, T, T]
  tokens = attention.shape[-1]
  attention = 0.5 * attention + 0.5 * jnp.eye(tokens)
  attention = attention / attention.sum(axis=-1, keepdims=True)

  def step(rolled, layer):
    return jnp.einsum("bij,bjk->bik", layer, rolled), None

  rolled, _ = jax.lax.scan(step, attention[0], attention[1:])
  return rolled[:, 0, 1:].reshape(rolled.shape[0], *grid)


def black_baseline(spec: ImageSpec) -> np.ndarray:
  """A black image as the model sees it (normalised): integrated gradients' baseline [C]."""
  return (0.0 - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)


def to_image_frame(saliency: np.ndarray, height: int, width: int, spec: ImageSpec) -> np.ndarray:
  """A map over the model's input [S, S] → over the original image [height, width], float32.

  Undoes `vision.data.pipeline.prepare_image`: the map is placed where the centre
  crop was taken from the resized image, the rest stays zero, and the whole is
  resized (bilinear) to the original size; outside the crop it is exactly zero.
  """
  new_h, new_w, top, left = resize_crop_geometry(height, width, spec.size, spec.resize_size)
  canvas = np.zeros((new_h, new_w), np.float32)
  canvas[top:top + spec.size, left:left + spec.size] = saliency
  if (new_h, new_w) != (height, width):
    canvas = np.asarray(Image.fromarray(canvas, mode="F").resize((width, height),
                                                                   Image.BILINEAR))
  # Zero exactly where the crop cut the image away (bilinear blurs the border).
  rows = (np.arange(height) + 0.5) * new_h / height  # pixel centres in the resized image
  cols = (np.arange(width) + 0.5) * new_w / width
  inside_rows = (rows >= top) & (rows < top + spec.size)
  inside_cols = (cols >= left) & (cols < left + spec.size)
  canvas = canvas * inside_rows[:, None] * inside_cols[None, :]
  return np.clip(canvas, 0.0, 1.0).astype(np.float32)


def overlay(image: np.ndarray, saliency: np.ndarray, alpha: float = 0.5) -> np.ndarray:
  """uint8 RGB: the image blended with the map in the 'jet' colour map (pytorch-grad-cam's)."""
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  heat = matplotlib.colormaps["jet"](np.clip(saliency, 0, 1))[..., :3] * 255.0
  return np.round((1 - alpha) * image[..., :3].astype(np.float32) + alpha * heat).astype(np.uint8)
