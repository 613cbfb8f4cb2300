"""Dataset structure checked before step 1, the same for training's sources and for prepare.

Each case is a layout users really have (a single class folder, a Roboflow export, a
truncated JPEG, macOS `._` companions, splits that disagree, labels the model cannot
represent) with the right outcome: a one-line error (`SourceError`/`ConfigError`,
which every entry point prints as `error: ...` with exit status 2), or the file
skipped and counted in one line.
"""

from __future__ import annotations

import io
import logging
import pathlib

import numpy as np
from PIL import Image
import pytest

from conftest import class_pattern, run_module, tiny_config, write_idx
from vision.config import ConfigError
from vision.data import prepare
from vision.data.sources import SourceError, SplitOptions, open_dataset
from vision.train import loop
from vision.train.cross_validate import fold_indices

NAMES = ("bolt", "nut", "screw", "washer")


def write_classes(root: pathlib.Path, counts: dict[str, int], seed: int = 0) -> pathlib.Path:
  """`root/CLASS/NNN.png` images of the quadrant task (16x16 grey), `counts[CLASS]` each."""
  rng = np.random.default_rng(seed)
  for name, count in counts.items():
    (root / name).mkdir(parents=True, exist_ok=True)
    label = NAMES.index(name) if name in NAMES else 0
    for i in range(count):
      Image.fromarray(class_pattern(label, rng)).save(root / name / f"{i:03d}.png")
  return root


def truncated_jpeg() -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(
      buffer, format="JPEG")
  return buffer.getvalue()[:2000]


def both_fail(source: str, out: pathlib.Path, match: str) -> None:
  """Training's source and prepare refuse `source` with the same one-line error."""
  with pytest.raises(SourceError, match=match):
    open_dataset(source)
  with pytest.raises(SourceError, match=match):
    prepare.prepare(source, str(out))
  assert not out.exists()  # prepare validates before it writes


@pytest.mark.slow
def test_single_class_folder_exits_2_before_training(tmp_path):
  data = write_classes(tmp_path / "data", {"defect": 20})
  result = run_module("experiments.train", f"--config=tests/configs/tiny.py:source=folder:{data}",
                      f"--workdir={tmp_path / 'run'}", check=False, timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1] == (
      "error: found 1 class ('defect'); a classifier needs at least 2")
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_single_class_is_refused_by_every_source(tmp_path):
  data = write_classes(tmp_path / "data", {"defect": 20})
  both_fail(f"folder:{data}", tmp_path / "out", r"^found 1 class \('defect'\); a classifier "
            "needs at least 2$")
  (tmp_path / "labels.csv").write_text(
      "path,label\n" + "".join(f"data/defect/{i:03d}.png,defect\n" for i in range(20)))
  both_fail(f"csv:{tmp_path / 'labels.csv'}", tmp_path / "out", "found 1 class")
  idx = tmp_path / "idx"
  idx.mkdir()
  for prefix in ("train", "t10k"):  # IDX files whose every label is 0
    write_idx(idx / f"{prefix}-images-idx3-ubyte.gz", np.zeros((16, 16, 16), np.uint8), True)
    write_idx(idx / f"{prefix}-labels-idx1-ubyte.gz", np.zeros(16, np.uint8), True)
  with pytest.raises(SourceError, match=r"found 1 class \('0'\)"):
    open_dataset(f"idx:{idx}")


@pytest.mark.parametrize("val_name", ["valid", "validation", "val"])
def test_roboflow_layout_uses_its_validation_folder(tmp_path, val_name):
  root = tmp_path / "export"
  write_classes(root / "train", {"bolt": 10, "nut": 10})
  write_classes(root / val_name, {"bolt": 6, "nut": 6}, seed=1)
  write_classes(root / "test", {"bolt": 3, "nut": 3}, seed=2)
  (root / "README.roboflow.txt").write_text("exported by Roboflow")
  (root / "data.yaml").write_text("names: [bolt, nut]")
  dataset = open_dataset(f"folder:{root}")
  assert {k: len(v) for k, v in dataset.splits.items()} == {"train": 20, "val": 12, "test": 6}
  val_paths = {dataset.split("val").paths[i] for i in range(12)}
  assert all(f"/{val_name}/" in p for p in val_paths)
  report = prepare.prepare(f"folder:{root}", str(tmp_path / "prepared"))
  assert {s: v["count"] for s, v in report["splits"].items()} == {"train": 20, "val": 12,
                                                                   "test": 6}


def test_unknown_top_level_folder_is_named(tmp_path):
  root = tmp_path / "export"
  write_classes(root / "train", {"bolt": 4, "nut": 4})
  write_classes(root / "valid", {"bolt": 2, "nut": 2})
  write_classes(root / "extras", {"bolt": 2})
  both_fail(f"folder:{root}", tmp_path / "out", r"unknown folder\(s\) 'extras'")
  (root / "extras").rename(root / "val")  # two validation folders
  both_fail(f"folder:{root}", tmp_path / "out", "has both val/ and valid/")


def test_splits_that_disagree_and_empty_classes(tmp_path, caplog):
  root = tmp_path / "export"
  write_classes(root / "train", {"bolt": 6, "nut": 6})
  write_classes(root / "valid", {"bolt": 2, "nut": 2, "screw": 3})
  both_fail(f"folder:{root}", tmp_path / "out",
            "class 'screw' has examples in val but none in train")
  (root / "valid" / "screw").rename(tmp_path / "moved")
  (root / "valid" / "nut").rename(tmp_path / "moved-nut")
  # The reverse trains soundly (val just reports less): one warning line from each reader.
  with caplog.at_level(logging.WARNING):
    open_dataset(f"folder:{root}")
    prepare.prepare(f"folder:{root}", str(tmp_path / "out"))
  warned = [r.getMessage() for r in caplog.records if "none in the source's own" in r.getMessage()]
  assert len(warned) == 2 and all(
      "class 'nut' has training examples but none in the source's own val split" in w
      for w in warned), warned
  flat = write_classes(tmp_path / "flat", {"bolt": 6, "nut": 6})
  (flat / "screw").mkdir()
  both_fail(f"folder:{flat}", tmp_path / "out2", "class 'screw' has no examples; the model can "
            "never learn to predict it: add images or remove the class")


def test_labels_the_model_cannot_represent(tmp_path):
  data = write_classes(tmp_path / "data", {name: 8 for name in NAMES})
  rows = [f"data/{name}/{i:03d}.png,{name}" for name in NAMES for i in range(8)]
  (tmp_path / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
  declared = SplitOptions(class_names=("bolt", "nut", "washer"))
  with pytest.raises(SourceError, match=r"labels.csv line 18: label 'screw' is not in config "
                     r"key 'data.class_names'"):
    open_dataset(f"csv:{tmp_path / 'labels.csv'}", declared)
  with pytest.raises(SourceError, match="label 'screw' is not in config key 'data.class_names'"):
    open_dataset(f"folder:{data}", declared)
  # Declared names set the order; the model's head must hold every class.
  ordered = open_dataset(f"folder:{data}", SplitOptions(class_names=NAMES[::-1]))
  assert ordered.class_names == NAMES[::-1]
  config = tiny_config(f"folder:{data}", steps=1)
  config.data.image_size = 16
  config.model.num_classes = 3
  with pytest.raises(ConfigError, match=r"'model.num_classes'=3 is below the data's 4 classes"):
    loop.train(config, tmp_path / "run")


def test_unreadable_files_and_macos_companions_are_skipped_and_counted(tmp_path, caplog):
  """One truncated JPEG and two `._` files: counted up front by both readers, in one line.

  (tests/test_train.py trains on such a folder through to the test report.)
  """
  data = write_classes(tmp_path / "data", {name: 12 for name in NAMES})
  (data / "bolt" / "broken.jpg").write_bytes(truncated_jpeg())
  (data / "nut" / "._000.png").write_bytes(b"\0\5\26\7 AppleDouble")
  (data / "nut" / "._001.png").write_bytes(b"\0\5\26\7 AppleDouble")
  with caplog.at_level(logging.WARNING, logger="vision.data.sources"):
    dataset = open_dataset(f"folder:{data}")
  lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
  assert len(lines) == 1 and "skipped 3 of 51 files (macos-companion: 2, truncated: 1)" in lines[0]
  assert "broken.jpg: truncated image data" in lines[0]
  assert sum(len(split) for split in dataset.splits.values()) == 48
  report = prepare.prepare(f"folder:{data}", str(tmp_path / "prepared"))
  assert report["summary"]["macos-companion"] == 2 and report["summary"]["truncated"] == 1
  assert report["files_kept"] == 48 and report["files_seen"] == 51


def test_tiny_classes_never_reach_scikit_learn_errors(tmp_path):
  """Carving tiny data: one line naming the problem, never scikit-learn's ValueError."""
  data = write_classes(tmp_path / "data", {"bolt": 2, "nut": 2, "screw": 2})
  # 4 of 6 to test leaves 2 for 3 classes: scikit-learn's stratified split raised here.
  with pytest.raises(SourceError, match=r"carving test from train left classes 'nut', 'screw' "
                     "without training examples: lower data.val_fraction / data.test_fraction"):
    open_dataset(f"folder:{data}", SplitOptions(test_fraction=0.6))
  write_classes(tmp_path / "data", {"washer": 1})
  dataset = open_dataset(f"folder:{data}", SplitOptions(val_fraction=0.2, test_fraction=0.2))
  train = dataset.split("train")
  assert 3 in {int(train.base.labels[i]) for i in train.indices}  # a class's only image stays
  with pytest.raises(SourceError, match="cannot carve 7 examples from a training split of 7"):
    open_dataset(f"folder:{data}", SplitOptions(test_fraction=0.99))

  # Cross-validation's stratified folds: scikit-learn's ValueError becomes one line on --folds.
  with pytest.raises(ConfigError, match=r"--folds=5 is more than the largest class's 3 examples; "
                     "use --folds=3 or fewer"):
    fold_indices(np.array([0, 0, 0, 1, 1, 2, 2, 2]), 5, seed=0)
  assert len(fold_indices(np.array([0, 0, 0, 1, 1, 2, 2, 2]), 3, seed=0)) == 3
