"""The audit's near duplicates (hash candidates, pixel confirmation, groups) and bounded report.

Real data: Fashion-MNIST test images (Debian's files) with real near-identical pairs and pairs
whose perceptual hashes collide although they show different objects, scikit-image photos,
and planted copies (re-encoded, shifted, resized).
"""

from __future__ import annotations

import collections
import io
import itertools
import json
import pathlib

import imagehash
import numpy as np
import pytest
import skimage.data
from PIL import Image

from vision.data import audit, prepare
from vision.data.sources import read_idx

FASHION_MNIST = pathlib.Path("/usr/share/datasets/fashion-mnist")
NAMES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
         "boot")
# Pairs of the Fashion-MNIST test set (indices) that are the same picture: found by the audit
# and looked at (README, "Near duplicates").
SAME_PICTURE = ((2115, 4926), (802, 9921), (5886, 8859))
# Pairs whose 64-bit pHashes are within 2 bits although they show different objects with
# different labels (a sandal and a sneaker at distance 0): what the hash alone reported.
HASH_COLLISIONS = ((722, 6698), (1195, 2559), (1817, 5723), (1840, 8745), (2015, 3937))
THRESHOLD = audit.Limits().near_duplicate_difference


def _fashion_mnist_test() -> tuple[np.ndarray, np.ndarray]:
  return (read_idx(FASHION_MNIST / "t10k-images-idx3-ubyte.gz"),
          read_idx(FASHION_MNIST / "t10k-labels-idx1-ubyte.gz"))


def _rgb(array: np.ndarray) -> np.ndarray:
  return np.stack([array] * 3, axis=-1) if array.ndim == 2 else array[..., :3]


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
  with Image.open(buffer) as decoded:
    return np.asarray(decoded.convert("RGB"))


def _shift(image: np.ndarray) -> np.ndarray:
  """One pixel to the right, the left column repeated (as a crop box moved by a pixel)."""
  return np.concatenate([image[:, :1], image[:, :-1]], axis=1)


def _resize(image: np.ndarray, factor: float) -> np.ndarray:
  height, width = image.shape[:2]
  size = (round(width * factor), round(height * factor))
  return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def _photo(name: str, side: int) -> np.ndarray:
  image = _rgb(getattr(skimage.data, name)())
  return _resize(image, side / max(image.shape[:2]))


def _signatures(images) -> np.ndarray:
  return np.stack([audit.pixel_signature(Image.fromarray(image)) for image in images])


# --------------------------------------------------------------- the confirming measure


def test_pixel_difference_threshold_holds_across_sizes():
  """Copies (JPEG, a 1-px shift, resizes) pass at every size; different photos and faces don't."""
  copies, different = [], []
  photos = ("astronaut", "coffee", "chelsea", "camera", "rocket")
  for side in (48, 96, 256, 1024):
    originals = {name: _photo(name, side) for name in photos}
    for image in originals.values():
      copies += [(image, _jpeg(image, 75)), (image, _shift(image)), (image, _resize(image, 0.9))]
      if side <= 256:
        copies.append((image, _resize(image, 2)))
      if side >= 96:
        copies.append((image, _resize(image, 0.75)))
    different += [(originals[a], originals[b]) for a, b in itertools.combinations(photos, 2)]
  copy_difference = audit.pixel_difference(_signatures(a for a, _ in copies),
                                           _signatures(b for _, b in copies))
  assert copy_difference.max() <= THRESHOLD, copy_difference.max()
  assert audit.pixel_difference(_signatures(a for a, _ in different),
                                _signatures(b for _, b in different)).min() > 2 * THRESHOLD
  faces = _signatures(_rgb((face * 255).round().astype(np.uint8))
                      for face in skimage.data.lfw_subset()[:40])  # 25 px faces, 40 people
  first, second = zip(*itertools.combinations(range(40), 2))
  assert audit.pixel_difference(faces[list(first)], faces[list(second)]).min() > 2 * THRESHOLD
  same = audit.pixel_difference(faces, faces)
  assert same.max() < 1e-3


def test_phash_from_the_signature_is_imagehash_phash():
  images = [_photo("astronaut", 300), _photo("coffee", 57), _rgb(_fashion_mnist_test()[0][0])]
  for image in images:
    signature = audit.pixel_signature(Image.fromarray(image))
    assert imagehash.phash(Image.fromarray(signature)) == imagehash.phash(Image.fromarray(image))


# ------------------------------------------------------------------ candidate generation


@pytest.mark.parametrize("radius", [0, 3, 4, 8])
def test_hash_candidates_equal_the_all_pairs_scan(radius):
  rng = np.random.default_rng(radius)
  base = rng.integers(0, 2**64, size=1500, dtype=np.uint64)
  # Near copies: flip up to 10 random bits of some hashes, so distances straddle the radius.
  near = base[:600].copy()
  for row, flips in enumerate(rng.integers(0, 11, size=600)):
    for bit in rng.choice(64, size=flips, replace=False):
      near[row] ^= np.uint64(1) << np.uint64(bit)
  hashes = np.concatenate([base, near, base[:5]])  # and exact copies
  pairs, distances = audit.hash_candidates(hashes, radius)
  all_distances = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
  rows, cols = np.nonzero(np.triu(all_distances <= radius, k=1))
  assert sorted(map(tuple, pairs.tolist())) == sorted(zip(rows.tolist(), cols.tolist()))
  np.testing.assert_array_equal(distances, all_distances[pairs[:, 0], pairs[:, 1]])
  assert len(pairs) > 0


# ------------------------------------------------------- prepare on real images, end to end


@pytest.fixture(scope="module")
def near_duplicates(tmp_path_factory):
  """200 Fashion-MNIST test images, the real same-picture pairs, the hash collisions and
  planted copies, as train/ and test/ class folders, prepared once."""
  images, labels = _fashion_mnist_test()
  root = tmp_path_factory.mktemp("near") / "data"

  def write(split: str, label: str, name: str, image: np.ndarray, fmt: str = "PNG") -> str:
    folder = root / split / label
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / name, format=fmt)
    return f"{split}/{label}/{name}"

  def fashion(index: int, split: str = "train", label: str | None = None) -> str:
    return write(split, label or NAMES[labels[index]], f"{index:05d}.png", images[index])

  for index in range(200):
    fashion(index)
  for pair in HASH_COLLISIONS:
    for index in pair:
      fashion(index)
  expected = {}
  expected[frozenset({fashion(2115), fashion(4926, "test")})] = "near-duplicate-leakage"
  expected[frozenset({fashion(802), fashion(9921)})] = "near-duplicate-within-split"
  # The same shirt filed under two classes: a label conflict.
  expected[frozenset({fashion(5886), fashion(8859, label="tshirt")})] = (
      "near-duplicate-conflicting-labels")
  # Planted: a 28-px image re-encoded (JPEG 90) into test and enlarged 2x in train.
  copied, label = _rgb(images[13]), NAMES[labels[13]]
  expected[frozenset({fashion(13), write("test", label, "13-q90.jpg", _jpeg(copied, 90)),
                      write("train", label, "13-2x.png", _resize(copied, 2))})] = (
                          "near-duplicate-leakage")
  # Planted: a photo shifted by a pixel, shrunk to 3/4 and saved as JPEG 75; another photo.
  photo = _photo("astronaut", 128)
  expected[frozenset({write("train", "photo", "astronaut.png", photo),
                      write("train", "photo", "shifted.png", _shift(photo)),
                      write("train", "photo", "smaller.png", _resize(photo, 0.75)),
                      write("train", "photo", "q75.jpg", _jpeg(photo, 75), "JPEG")})] = (
                          "near-duplicate-within-split")
  write("train", "photo", "coffee.png", _photo("coffee", 128))
  out = root.parent / "prepared"
  report = prepare.prepare(f"folder:{root}", str(out),
                           prepare.PrepareOptions(val_fraction=0, test_fraction=0))
  return root, out, report, expected


def test_near_duplicate_groups_are_the_real_and_planted_ones(near_duplicates):
  root, _, report, expected = near_duplicates
  found = {frozenset(str(pathlib.Path(m).relative_to(root)) for m in f["members"]): f["kind"]
           for f in report["findings"] if f["kind"].startswith("near-duplicate")}
  assert found == expected
  for finding in report["findings"]:
    if finding["kind"].startswith("near-duplicate"):
      assert finding["action"] == "reported" and finding["path"] == finding["members"][0]
      assert f"{len(finding['members'])} near-identical images" in finding["reason"]
  conflict = next(f for f in report["findings"] if f["kind"].endswith("conflicting-labels"))
  assert "labels differ: shirt ×1, tshirt ×1" in conflict["reason"]
  stats = report["near_duplicates"]
  assert stats["groups"] == len(expected)
  assert stats["images"] == sum(len(group) for group in expected)


def test_hash_collisions_are_candidates_but_not_reported(near_duplicates):
  root, _, report, _ = near_duplicates
  images, _ = _fashion_mnist_test()
  reported = {m for f in report["findings"] for m in f.get("members", ())}
  for first, second in HASH_COLLISIONS:
    distance = (imagehash.phash(Image.fromarray(_rgb(images[first])))
                - imagehash.phash(Image.fromarray(_rgb(images[second]))))
    assert distance <= audit.Limits().near_duplicate_distance  # the hash alone would report it
    assert not {p for p in reported if f"{first:05d}.png" in p or f"{second:05d}.png" in p}
  stats = report["near_duplicates"]
  assert stats["candidate_pairs"] >= stats["confirmed_pairs"] + len(HASH_COLLISIONS)


def test_audit_files_hold_groups_and_the_page_shows_them(near_duplicates):
  _, out, report, expected = near_duplicates
  on_disk = json.loads((out / "audit.json").read_text())
  assert on_disk["near_duplicates"] == report["near_duplicates"]
  groups = [f for f in on_disk["findings"] if "members" in f]
  assert len(groups) == len(expected)
  assert all(f["kind"].startswith("near-duplicate") for f in groups)
  page = (out / "audit.html").read_text()
  for kind in set(expected.values()):
    assert f'id="{kind}"' in page
  assert page.count("<img ") == sum(len(g) for g in expected) + audit.HTML_EXAMPLES_PER_KIND


# ------------------------------------------------------------------------ bounded page


def test_html_stays_small_for_100k_images():
  """100k images' worth of findings, every picture a worst case (noise): the page is bounded."""
  rng = np.random.default_rng(0)
  noise = audit.thumbnail_uri(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8))
  kinds = ["greyscale", "exif-rotated", "truncated", "corrupt", "not-an-image", "too-small",
           "duplicate-within-split", "leakage", "duplicate-conflicting-labels", "cmyk", "alpha",
           "palette", "16-bit"]
  findings = [{"path": f"/data/{kind}/{i:06d}.png", "kind": kind, "reason": "r" * 300,
               "action": "normalised"} for i, kind in zip(range(70_000), itertools.cycle(kinds))]
  for kind in ("near-duplicate-within-split", "near-duplicate-leakage",
               "near-duplicate-conflicting-labels"):
    for group in range(2_000):  # 30k more images in groups of 5
      members = [f"/data/{kind}/{group:05d}-{m}.png" for m in range(5)]
      findings.append({"path": members[0], "kind": kind, "reason": "x" * 200,
                       "action": "reported", "members": members})
  report = {"source": "folder:/data", "files_seen": 100_000, "files_kept": 100_000,
            "files_excluded": 0, "splits": {}, "findings": findings,
            "near_duplicates": {"hash_distance": 4, "difference": 0.07, "candidate_pairs": 9,
                                "confirmed_pairs": 8, "groups": 6000, "images": 30_000}}
  asked = []

  def thumbnail(path: str) -> str:
    asked.append(path)
    return noise

  page = audit.render_html(report, thumbnail)
  assert len(page.encode()) < 20_000_000
  kinds_shown = len(kinds) + 3
  assert len(asked) <= kinds_shown * audit.HTML_EXAMPLES_PER_KIND * audit.HTML_MEMBERS_SHOWN
  counts = collections.Counter(f["kind"] for f in findings)
  for kind in kinds:
    assert f"{kind}: {audit.HTML_EXAMPLES_PER_KIND} of {counts[kind]} shown" in page
  assert "near-duplicate-leakage: 20 of 2000 shown" in page
  assert '<td>2000</td><td>10000</td>' in page  # findings and images of a group kind
