"""Saliency maps: the pointing game, class targets, the randomisation sanity check, the command."""

from __future__ import annotations

import json

from flax import nnx
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
from scipy import stats

from conftest import run_module
import quadrant_data
from vision.checkpoint import load_model
from vision.data.pipeline import ImageSpec, prepare_image
from vision.errors import ConfigError
from vision.evaluate import saliency
from vision.evaluate.explain import explain_files, resolve_target
from vision.models import ModelOptions, create_model


def _normalised(images: np.ndarray, mean: float, std: float) -> np.ndarray:
  return ((images[..., None] / 255.0 - mean) / std).astype(np.float32)


@pytest.fixture(scope="module")
def trained(quadrant_run):
  """(model, card, a re-initialised twin) of the quadrant run."""
  model, card = load_model(quadrant_run)
  twin = create_model(card.arch, card.options(), rngs=nnx.Rngs(123))
  twin.eval()
  return model, card, twin


def _explainer(model, card, method):
  # Integrated gradients at 16 path samples (32 by default): the same code, half the gradients.
  return saliency.Explainer(model, method, steps=16,
                            baseline=np.array([-card.mean[0] / card.std[0]]))


# --------------------------------------------------------------------------- unit

def test_the_last_convolutional_stage_is_found_by_layer_group_in_every_cnn_family():
  # Built abstractly (shapes only, nothing initialised or compiled): the search traces one forward.
  expected = {"small_cnn": "stages.1", "resnet18": "blocks.7", "mobilenet_v2": "last",
              "mobilenet_v3_small": "last", "efficientnet_b0": "last", "convnext_tiny": "stages.3"}
  options = ModelOptions(num_classes=3, in_channels=3, image_size=64, widths=(8, 16))
  for arch, path in expected.items():
    model = nnx.eval_shape(lambda arch=arch: create_model(arch, options, rngs=nnx.Rngs(0)))
    found, shape = saliency.conv_layer(model, (64, 64, 3))
    assert found == path and len(shape) == 4 and shape[1] * shape[2] > 1, arch
  with pytest.raises(ConfigError, match="rollout needs a Vision Transformer"):
    saliency.Explainer(model, "rollout")(np.zeros((1, 64, 64, 3), np.float32), [0])


def test_a_vision_transformer_has_rollout_and_no_convolutional_stage():
  vit = create_model("vit_ti16", ModelOptions(num_classes=3, image_size=32), rngs=nnx.Rngs(0))
  with pytest.raises(ConfigError, match="no convolutional feature map.*rollout"):
    saliency.conv_layer(vit, (32, 32, 3))
  vit.eval()
  maps = saliency.Explainer(vit, "rollout")(np.zeros((2, 32, 32, 3), np.float32), [0, 1])
  assert maps.shape == (2, 32, 32) and 0 <= maps.min() and maps.max() <= 1


def test_attention_rollout_multiplies_residual_attention_through_the_blocks():
  # One image, one head, class token + 2 patches; block 1: the class token looks at patch 1,
  # block 2: at patch 2. With the residual: A = (W + I) / 2 (rows already sum to 1).
  first = np.array([[0, 1, 0], [0, 1, 0], [0, 0, 1]], np.float32)
  second = np.array([[0, 0, 1], [0, 1, 0], [0, 0, 1]], np.float32)
  maps = jnp.asarray(np.stack([first, second])[:, None, None])  # [L, B, heads, T, T]
  a1, a2 = (first + np.eye(3)) / 2, (second + np.eye(3)) / 2
  expected = (a2 @ a1)[0, 1:]  # the class token's row over the patches: [0.25, 0.5]
  np.testing.assert_allclose(saliency.attention_rollout(maps, (1, 2))[0, 0], expected)
  np.testing.assert_allclose(expected, [0.25, 0.5])


def test_a_map_is_mapped_back_through_resize_and_centre_crop():
  # A 300×451 photo, resized to 256 on its shorter side, centre crop 224 (ImageNet's).
  spec = ImageSpec(224, 3, (0.5,) * 3, (0.5,) * 3, resize_size=256)
  photo = np.zeros((300, 451, 3), np.uint8)
  photo[140:160, 280:300] = 255  # a bright square right of centre
  prepared = prepare_image(photo, spec)[..., 0].astype(np.float32) / 255
  full = saliency.to_image_frame(prepared, 300, 451, spec)
  assert full.shape == (300, 451) and full.dtype == np.float32
  assert 0 <= full.min() and full.max() <= 1
  rows, cols = np.nonzero(full > 0.5)
  assert 138 <= rows.min() and rows.max() <= 161 and 278 <= cols.min() and cols.max() <= 301
  # Zero where the crop cut the image away: it kept 224·300/256 ≈ 262 px of each side.
  ones = saliency.to_image_frame(np.ones((224, 224), np.float32), 300, 451, spec)
  kept_rows, kept_cols = np.nonzero(ones.any(axis=1))[0], np.nonzero(ones.any(axis=0))[0]
  assert abs(len(kept_rows) - 262) <= 1 and abs(len(kept_cols) - 262) <= 1
  assert ones[:, :kept_cols[0]].max() == 0 and ones[:, kept_cols[-1] + 1:].max() == 0
  assert abs(kept_cols[0] - (451 - 262) / 2) <= 1.5


def test_targets_resolve_by_index_or_name_with_one_line_mistakes():
  names = ("tabby", "tiger cat", "Egyptian cat")
  assert resolve_target("2", names) == 2 and resolve_target("tiger cat", names) == 1
  assert resolve_target(None, names) is None
  with pytest.raises(ConfigError, match=r"--target=7 is out of range.*0\.\.2"):
    resolve_target("7", names)
  with pytest.raises(ConfigError, match="did you mean 'tabby'"):
    resolve_target("taby", names)


# ----------------------------------------------------------- on a trained model

@pytest.mark.slow
@pytest.mark.parametrize("method", ["gradcam", "gradcam_pp", "integrated_gradients"])
def test_pointing_game_on_evidence_in_a_random_quadrant(trained, method):
  model, card, _ = trained
  images, labels, quadrants = quadrant_data.quadrant_images(128, seed=5)
  maps = _explainer(model, card, method)(_normalised(images, card.mean[0], card.std[0]), labels)
  assert maps.shape == (128, 32, 32) and maps.min() >= 0 and maps.max() <= 1
  hits = np.mean(quadrant_data.quadrant_of(maps) == quadrants)
  print(f"{method}: the maximum falls in the evidence's quadrant for {hits:.1%}")
  assert hits >= 0.9


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gradcam"])  # the class-discriminative one (README: the others)
def test_each_target_points_at_its_own_quadrant(trained, method):
  model, card, _ = trained
  images, labels, quadrants = quadrant_data.two_class_images(64, seed=6)
  explainer = _explainer(model, card, method)
  normalised = _normalised(images, card.mean[0], card.std[0])
  for k in (0, 1):
    maps = explainer(normalised, labels[:, k])
    hits = np.mean(quadrant_data.quadrant_of(maps) == quadrants[:, k])
    print(f"{method}, target {k}: {hits:.1%} in its own quadrant")
    assert hits >= 0.9


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gradcam", "integrated_gradients"])
def test_maps_of_a_randomised_model_differ_from_the_trained_models(trained, method):
  model, card, twin = trained
  images, labels, _ = quadrant_data.quadrant_images(32, seed=7)
  normalised = _normalised(images, card.mean[0], card.std[0])
  maps = _explainer(model, card, method)(normalised, labels)
  random_maps = _explainer(twin, card, method)(normalised, labels)
  rho = np.mean([stats.spearmanr(a.ravel(), b.ravel())[0] for a, b in zip(maps, random_maps)])
  print(f"{method}: rank correlation with the re-initialised model's maps {rho:.3f}")
  assert rho < 0.5


@pytest.mark.slow
def test_explain_writes_maps_of_each_files_own_size(quadrant_run, tmp_path):
  """What `experiments.explain --method=gradcam --target=checker` runs, in-process."""
  rng = np.random.default_rng(11)
  square = rng.integers(0, 50, size=(32, 32), dtype=np.uint8)
  quadrant_data.place(square, 2, 3, rng)  # a checkerboard in the bottom-right quadrant
  Image.fromarray(square).save(tmp_path / "square.png")
  # 40×56 RGB: resized to 32×44, then the centre crop cuts 7.5 px of each side away.
  wide = rng.integers(0, 50, size=(40, 56, 3), dtype=np.uint8)
  wide[22:32, 30:40] += (190 * np.kron(quadrant_data.texture(2), np.ones((2, 2)))[:10, :10, None]
                         ).astype(np.uint8)
  Image.fromarray(wide).save(tmp_path / "wide.png")
  (tmp_path / "broken.png").write_bytes(b"not an image")
  out = tmp_path / "maps"
  lines = list(explain_files(quadrant_run, [str(tmp_path / n) for n in
                                            ("wide.png", "broken.png", "square.png")],
                             method="gradcam", target="checker", out=out))
  assert [l.get("label") for l in lines] == ["checker", None, "checker"]
  assert lines[0]["target"] == 2 and lines[1]["error"] == "not an image format Pillow can identify"
  wide_map, square_map = np.load(out / "wide.npy"), np.load(out / "square.npy")
  assert wide_map.shape == (40, 56) and square_map.shape == (32, 32)
  assert wide_map.dtype == square_map.dtype == np.float32
  assert 0 <= wide_map.min() and wide_map.max() <= 1
  assert square_map.max() == pytest.approx(1.0, abs=1e-4)  # m / (m + eps): 1 within eps
  assert quadrant_data.quadrant_of(square_map[None])[0] == 3
  assert wide_map[:, :5].max() == 0 and wide_map[:, -5:].max() == 0  # cut away by the crop
  with Image.open(out / "wide.png") as overlay:
    assert overlay.size == (56, 40) and overlay.mode == "RGB"
  # Mistakes are one line (ConfigError: `common.run` prints it as `error: ...`, exit 2).
  with pytest.raises(ConfigError, match="--target does not apply to --method=rollout"):
    next(explain_files(quadrant_run, [str(tmp_path / "square.png")], method="rollout",
                       out=out, target="diagonal"))
  with pytest.raises(ConfigError, match="share the file stem 'square'"):
    next(explain_files(quadrant_run, ["a/square.png", "b/square.jpg"], method="gradcam", out=out))


@pytest.mark.slow
def test_the_explain_command_prints_json_lines_and_fails_in_one_line(quadrant_run, tmp_path):
  """`python -m experiments.explain` itself: flags, one JSON line per image, exit statuses."""
  rng = np.random.default_rng(12)
  square = rng.integers(0, 50, size=(32, 32), dtype=np.uint8)
  quadrant_data.place(square, 1, 0, rng)
  Image.fromarray(square).save(tmp_path / "square.png")
  (tmp_path / "broken.png").write_bytes(b"not an image")
  out = tmp_path / "maps"
  result = run_module("experiments.explain", f"--workdir={quadrant_run}", "--method=gradcam",
                      f"--out={out}", str(tmp_path / "square.png"), str(tmp_path / "broken.png"),
                      check=False)
  assert result.returncode == 1, result.stderr[-2000:]  # an unreadable image: the others still
  lines = [json.loads(line) for line in result.stdout.splitlines()]
  assert [line["file"] for line in lines] == [str(tmp_path / "square.png"),
                                              str(tmp_path / "broken.png")]
  assert lines[0]["method"] == "gradcam" and "error" in lines[1]
  assert np.load(out / "square.npy").shape == (32, 32) and (out / "square.png").exists()
  assert "error: 1 of 2 images could not be read" in result.stderr
  mistake = run_module("experiments.explain", f"--workdir={quadrant_run}", f"--out={out}",
                       "--target=zebra", str(tmp_path / "square.png"), check=False)
  errors = [line for line in mistake.stderr.splitlines() if line.startswith("error:")]
  assert mistake.returncode == 2 and len(errors) == 1 and "Traceback" not in mistake.stderr
  assert "--target='zebra' is not a class of this model" in errors[0]
