"""experiments.prepare: a messy folder, CSV and Label Studio sources, the audit, training on it."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import numpy as np
import pytest

from conftest import REPO, run_module
from prepare_data import CLASSES, good_image, rotated_expected, write_messy_folder
from vision.data import audit, pipeline, prepare
from vision.data.sources import SourceError, open_dataset
from vision.train import loop

LIMITS = audit.Limits(max_pixels=5000, min_size=10, near_duplicate_distance=4)


def _fashion_mnist_config():
  spec = importlib.util.spec_from_file_location("fmnist", REPO / "configs/fashion_mnist.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
  root = tmp_path_factory.mktemp("messy") / "photos"
  expected = write_messy_folder(root)
  before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
  out = root.parent / "prepared"
  report = prepare.prepare(f"folder:{root}", str(out), prepare.PrepareOptions(limits=LIMITS))
  return root, out, report, expected, before


def _by_path(report: dict, root: pathlib.Path) -> dict[str, set[str]]:
  """{file: kinds}; a group finding (near duplicates) counts for each of its members."""
  found: dict[str, set[str]] = {}
  for finding in report["findings"]:
    for path in finding.get("members") or [finding["path"]]:
      found.setdefault(str(pathlib.Path(path).relative_to(root)), set()).add(finding["kind"])
  return found


def test_audit_names_every_odd_file_with_its_reason(messy):
  root, out, report, expected, _ = messy
  found = _by_path(report, root)
  assert len({k for kinds in expected.values() for k in kinds}) >= 10
  for relative, kinds in expected.items():
    assert kinds <= found.get(relative, set()), (relative, found.get(relative))
  # Nothing good is flagged: every finding is about a file we planted.
  assert set(found) == set(expected), set(found) ^ set(expected)
  on_disk = json.loads((out / "audit.json").read_text())
  assert on_disk["summary"] == report["summary"]
  for finding in on_disk["findings"]:
    assert finding["reason"] and finding["action"] in ("excluded", "normalised", "reported")


def test_excluded_files_are_not_in_the_dataset_and_odd_ones_are_normalised(messy):
  root, out, report, expected, _ = messy
  metadata = json.loads((out / "metadata.json").read_text())
  stored = {str(pathlib.Path(r["path"]).relative_to(root))
            for rows in metadata["records"].values() for r in rows}
  excluded = {str(pathlib.Path(f["path"]).relative_to(root))
              for f in report["findings"] if f["action"] == "excluded"}
  assert not stored & excluded
  assert {"train/triangle/cmyk.jpg", "train/zigzag/palette.png", "train/circle/rotated.png",
          "train/triangle/sixteen.png", "train/zigzag/grey.png", "test/zigzag/near.png"} <= stored
  assert "train/circle/000.png" in stored  # the first copy of a duplicate stays
  assert metadata["class_names"] == list(CLASSES)
  assert metadata["splits"]["train"]["count"] == 48 + 6 - 1  # 6 normalised, conflict pair gone
  assert metadata["splits"]["val"]["count"] == 16
  assert all(len(r["sha256"]) == 64 for rows in metadata["records"].values() for r in rows)
  dataset = open_dataset(f"prepared:{out}")
  train = dataset.split("train")
  paths = [r["path"] for r in metadata["records"]["train"]]
  rotated = train[paths.index(str(root / "train/circle/rotated.png"))]["image"]
  np.testing.assert_array_equal(rotated, rotated_expected(root))
  assert rotated[0, -1].tolist() == [255, 0, 0]  # the marked corner, after a 90° turn
  for i in range(len(train)):
    assert train[i]["image"].ndim == 3 and train[i]["image"].shape[-1] == 3
  assert report["classes"]["imbalance_ratio"] == pytest.approx(
      max(report["classes"]["counts"].values()) / min(report["classes"]["counts"].values()))


def test_source_folder_is_untouched_and_html_is_self_contained(messy):
  root, out, _, _, before = messy
  after = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
  assert after == before
  page = (out / "audit.html").read_text()
  assert "truncated.jpg" in page and "data:image/png;base64," in page
  assert "src=\"http" not in page and "<link" not in page


def test_flat_csv_and_labelstudio_sources(tmp_path):
  rng = np.random.default_rng(0)
  images = tmp_path / "images"
  images.mkdir()
  rows, tasks = ["path,label"], []
  for i in range(40):
    label = CLASSES[i % 2]
    from PIL import Image  # pylint: disable=import-outside-toplevel
    Image.fromarray(good_image(i % 2, rng)).save(images / f"{i}.png")
    tags = label if i % 5 else f"{label};{CLASSES[3]}"
    rows.append(f"images/{i}.png,{tags}")
    tasks.append({"id": i, "data": {"image": f"/data/upload/1/abcdef12-{i}.png"},
                  "annotations": [{"was_cancelled": False, "result": [
                      {"type": "choices", "from_name": "choice", "to_name": "image",
                       "value": {"choices": [label]}}]}]})
  tasks.append({"id": 99, "data": {"image": "/data/upload/1/abcdef12-0.png"}, "annotations": []})
  (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
  (images / "export.json").write_text(json.dumps(tasks))

  report = prepare.prepare(f"csv:{tmp_path / 'labels.csv'}", str(tmp_path / "csv_out"))
  assert report["multi_label"] and report["class_names"] == [CLASSES[0], CLASSES[1], CLASSES[3]]
  assert {s: v["count"] for s, v in report["splits"].items()} == {"train": 32, "val": 4, "test": 4}
  dataset = open_dataset(f"prepared:{tmp_path / 'csv_out'}")
  assert dataset.multi_label and dataset.split("train")[0]["labels"].shape == (3,)

  report = prepare.prepare(f"labelstudio:{images / 'export.json'}", str(tmp_path / "ls_out"))
  assert not report["multi_label"] and report["files_kept"] == 40
  assert report["summary"] == {"unlabelled": 1}
  assert report["classes"]["counts"] == {CLASSES[0]: 20, CLASSES[1]: 20}


def test_bad_sources_are_one_line_errors(tmp_path, messy):
  root = messy[0]
  with pytest.raises(SourceError, match="inside the source folder"):
    prepare.prepare(f"folder:{root}", str(root / "out"))
  (tmp_path / "bad.csv").write_text("file,class\na.png,x\n")
  with pytest.raises(SourceError, match="columns 'path' and 'label'"):
    prepare.prepare(f"csv:{tmp_path / 'bad.csv'}", str(tmp_path / "o"))
  with pytest.raises(SourceError, match="not one of"):
    prepare.prepare(f"zip:{tmp_path}", str(tmp_path / "o"))
  with pytest.raises(SourceError, match="folder /nonexistent does not exist"):
    prepare.prepare("folder:/nonexistent", str(tmp_path / "o"))


@pytest.mark.slow
def test_prepare_cli_then_fashion_mnist_config_trains_on_prepared(tmp_path, messy):
  """The issue's commands; training also switches on every imbalance and augmentation option."""
  root = messy[0]
  out = tmp_path / "prepared"
  result = run_module("experiments.prepare", f"--source=folder:{root}", f"--out={out}",
                      "--max_pixels=5000")
  assert "prepared:" in result.stdout and "truncated: 1" in result.stdout
  assert "near duplicates: 1 group(s), 2 images" in result.stdout
  workdir = tmp_path / "run"
  # As `experiments.train --config=configs/fashion_mnist.py --config.KEY=VALUE ...`, in-process
  # to spare a second interpreter start (the train CLI's overrides are tested in test_train.py).
  config = _fashion_mnist_config()
  overrides = {
      "data.source": f"prepared:{out}", "train.batch_size": 32, "train.eval_batch_size": 32,
      "train.num_steps": 8, "train.eval_every_steps": 8, "wandb.mode": "disabled",
      "data.sampler": "balanced", "train.loss": "focal", "train.class_weights": "balanced",
      "data.random_resized_crop": True, "data.rrc_scale": (0.5, 1.0), "data.rotation": 15.0,
      "data.color_jitter": 0.2, "data.randaugment_ops": 1, "data.mixup_alpha": 0.2,
      "data.cutmix_alpha": 1.0}
  for key, value in overrides.items():
    group, name = key.split(".")
    config[group][name] = value
  report = loop.train(config, workdir)
  assert report == json.loads((workdir / "eval/test/report.json").read_text())
  assert report["class_names"] == list(CLASSES) and report["num_examples"] == 17
  card = json.loads((workdir / "model_card.json").read_text())
  # Sizes vary (24x24, 18x24 after rotation): the median side, 24 px, RGB.
  assert card["image_size"] == 24 and card["channels"] == 3 and card["num_classes"] == 4


def test_prepared_batches_read_at_once_equal_record_by_record(messy):
  _, out, _, _, _ = messy
  train = open_dataset(f"prepared:{out}").split("train")
  indices = np.arange(len(train))[::-1]
  images, labels = train.read_arrays(indices)
  assert isinstance(images, list)  # the messy folder's images differ in size
  for image, label, index in zip(images, labels, indices):
    np.testing.assert_array_equal(image, train[int(index)]["image"])
    assert label == train[int(index)]["label"]
  spec = pipeline.ImageSpec(size=16, channels=1, mean=(0.5,), std=(0.5,))
  batch, batch_labels = pipeline.read_batch(train, indices, spec)
  one_by_one = np.stack([pipeline.prepare_image(train[int(i)]["image"], spec) for i in indices])
  np.testing.assert_array_equal(batch, one_by_one)
  np.testing.assert_array_equal(batch_labels, labels)


def test_prepared_images_of_one_size_are_read_as_one_array(tmp_path, folder_dir):
  prepare.prepare(f"folder:{folder_dir}", str(tmp_path / "out"))
  train = open_dataset(f"prepared:{tmp_path / 'out'}").split("train")
  images, labels = train.read_arrays(np.array([3, 0, 5]))
  assert images.shape == (3, 20, 20, 3)
  for image, label, index in zip(images, labels, (3, 0, 5)):
    np.testing.assert_array_equal(image, train[index]["image"])
    assert label == train[index]["label"]
