"""Each augmentation op checked for its effect on a known image; seeded determinism."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision import config as config_lib
from vision import parallel, tasks
from vision.data import augment, pipeline
from vision.data.sources import ArraySource


def marked(size: int = 8, channels: int = 3) -> np.ndarray:
  image = np.zeros((size, size, channels), np.uint8)
  image[0, 0] = 255
  return image


def test_flips_move_a_marked_pixel():
  batch = np.stack([marked(), marked()])
  flipped = augment.flip(batch, np.array([True, False]), axis=2)
  assert flipped[0, 0, 7].tolist() == [255] * 3 and flipped[0, 0, 0].tolist() == [0] * 3
  np.testing.assert_array_equal(flipped[1], batch[1])
  vertical = augment.flip(batch, np.array([True, True]), axis=1)
  assert vertical[0, 7, 0].tolist() == [255] * 3


def test_rotation_by_90_is_rot90_and_small_angles_keep_the_centre():
  image = np.random.default_rng(0).integers(0, 256, (9, 9, 3), dtype=np.uint8)
  for k in (1, 2, 3):
    np.testing.assert_array_equal(augment.rotate(image, 90 * k), np.rot90(image, k=k))
  centre = np.zeros((9, 9, 1), np.uint8)
  centre[4, 4] = 200
  centre[4, 8] = 255  # right of centre; 90° counter-clockwise takes it to the top
  rotated = augment.rotate(centre, 90)
  assert rotated[0, 4, 0] == 255 and rotated[4, 4, 0] == 200
  tilted = augment.rotate(centre, 30.0)  # not a multiple of 90: Pillow, bilinear
  assert tilted.shape == (9, 9, 1) and tilted[4, 4, 0] == 200 and tilted[4, 8, 0] < 255
  assert augment.rotate(centre[:, :8], 10.0).shape == (9, 8, 1)


def test_color_jitter_changes_the_mean_within_bounds():
  rng = np.random.default_rng(0)
  grey = rng.integers(60, 140, (16, 12, 12, 1), dtype=np.uint8).repeat(3, axis=-1)
  strength = 0.3
  jittered = augment.color_jitter(grey, np.random.default_rng(1), strength)
  ratio = jittered.reshape(16, -1).mean(1) / grey.reshape(16, -1).mean(1)
  assert np.all(ratio >= 1 - strength - 0.01) and np.all(ratio <= 1 + strength + 0.01)
  assert np.abs(ratio - 1).max() > 0.05  # it did change something
  np.testing.assert_array_equal(jittered, augment.color_jitter(grey, np.random.default_rng(1),
                                                               strength))


def test_random_resized_crop_box_and_identity():
  rng = np.random.default_rng(0)
  top, left, h, w = augment.random_resized_crop_box(16, 16, rng, scale=(0.25, 0.25),
                                                    ratio=(1.0, 1.0))
  assert (h, w) == (8, 8) and 0 <= top <= 8 and 0 <= left <= 8
  image = np.random.default_rng(1).integers(0, 256, (12, 12, 3), dtype=np.uint8)
  whole = augment.random_resized_crop(image, rng, scale=(1.0, 1.0), ratio=(1.0, 1.0))
  np.testing.assert_array_equal(whole, image)
  quarter = np.zeros((16, 16, 1), np.uint8)
  quarter[:8, :8] = 255  # a crop of a quarter of the area fills ≥ 0 and ≤ all of the output
  cropped = augment.random_resized_crop(quarter, np.random.default_rng(2), (0.25, 0.25), (1, 1))
  assert cropped.shape == (16, 16, 1)


def test_randaugment_ops_and_determinism():
  image = np.random.default_rng(0).integers(0, 256, (10, 10, 3), dtype=np.uint8)
  for name in augment.RANDAUGMENT_OPS:
    assert augment.apply_op(image, name, 0.5).shape == image.shape, name
  np.testing.assert_array_equal(augment.apply_op(image, "identity", 1.0), image)
  np.testing.assert_array_equal(augment.apply_op(image, "solarize", 1.0), 255 - image)
  first = augment.rand_augment(image, np.random.default_rng(5), 2, 9)
  again = augment.rand_augment(image, np.random.default_rng(5), 2, 9)
  np.testing.assert_array_equal(first, again)


def _one_hot_batch(count: int = 8, size: int = 8):
  images = jnp.broadcast_to(jnp.arange(count, dtype=jnp.float32)[:, None, None, None],
                            (count, size, size, 1))
  return {"image": images, "label": jnp.arange(count, dtype=jnp.int32)}


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mixup_and_cutmix_label_mass_sums_to_one_and_matches_the_pixels(kind):
  data = config_lib.defaults().data
  data[f"{kind}_alpha"] = 1.0
  transform = jax.jit(augment.device_transform(data, tasks.plain_classification(8).dense_targets))
  # Sharded over the data axis of the project's (explicit) mesh, as in the train step.
  batch = parallel.to_global({k: np.asarray(v) for k, v in _one_hot_batch().items()},
                             parallel.make_mesh())
  out = transform(batch, jax.random.key(0))
  targets = np.asarray(out["targets"])
  np.testing.assert_allclose(targets.sum(1), 1.0, atol=1e-6)
  images = np.asarray(out["image"])[..., 0]
  for i in range(8):
    own = targets[i, i]
    if kind == "mixup":
      # image = lam * i + (1 - lam) * j, with targets lam on i and 1 - lam on j.
      expected = sum(t * c for c, t in enumerate(targets[i]))
      np.testing.assert_allclose(images[i], expected, atol=1e-5)
    elif own < 1:
      assert np.mean(images[i] == i) == pytest.approx(own, abs=1e-6)
  again = transform(batch, jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(again["image"]), np.asarray(out["image"]))


def test_host_augment_in_the_pipeline_is_seeded():
  config = config_lib.defaults()
  data = config.data
  data.random_resized_crop, data.vflip, data.rotation = True, True, 20.0
  data.randaugment_ops, data.color_jitter = 2, 0.2
  images = np.random.default_rng(0).integers(0, 256, (32, 12, 12, 3), dtype=np.uint8)
  records = ArraySource(images, np.arange(32) % 4)
  spec = pipeline.ImageSpec(12, 3, (0.5,), (0.5,))

  def batches(seed):
    iterator = pipeline.train_iterator(records, data, spec, batch_size=8, seed=seed)
    return [next(iterator)["image"] for _ in range(2)]

  first, again, other = batches(1), batches(1), batches(2)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(first[0], other[0])
  plain = pipeline.train_iterator(records, config_lib.defaults().data, spec, batch_size=8, seed=1)
  assert not np.array_equal(next(plain)["image"], first[0])
