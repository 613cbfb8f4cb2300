"""Data sources: IDX, folder and TFDS give the same record format, class names and splits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import NUM_CLASSES, write_folder_dataset, write_idx_dataset
from vision.data.sources import SourceError, SplitOptions, open_dataset, read_idx


@pytest.mark.parametrize("gzipped", [True, False])
def test_idx_reads_gzipped_and_raw_files(tmp_path, gzipped):
  root = write_idx_dataset(tmp_path / "idx", train=80, test=20, gzipped=gzipped)
  dataset = open_dataset(f"idx:{root}", SplitOptions(val_fraction=0.25))
  assert dataset.class_names == tuple(str(i) for i in range(NUM_CLASSES))
  assert {k: len(v) for k, v in dataset.splits.items()} == {"train": 60, "val": 20, "test": 20}
  record = dataset.split("train")[0]
  assert record["image"].shape == (16, 16, 1) and record["image"].dtype == np.uint8
  assert isinstance(record["label"], int)


def test_idx_class_names_come_from_the_config(idx_dir):
  names = ("a", "b", "c", "d")
  assert open_dataset(f"idx:{idx_dir}", SplitOptions(class_names=names)).class_names == names


def test_carved_validation_split_is_stratified_disjoint_and_seeded(idx_dir):
  options = SplitOptions(val_fraction=0.25, split_seed=7)
  first, second = open_dataset(f"idx:{idx_dir}", options), open_dataset(f"idx:{idx_dir}", options)
  train, val = first.split("train"), first.split("val")
  train_ids, val_ids = set(train._indices.tolist()), set(val._indices.tolist())
  assert not train_ids & val_ids and len(train_ids | val_ids) == 512
  assert np.array_equal(val._indices, second.split("val")._indices)
  val_labels = [val[i]["label"] for i in range(len(val))]
  assert np.bincount(val_labels).tolist() == [32] * NUM_CLASSES


def test_read_idx_rejects_truncated_files(tmp_path):
  root = write_idx_dataset(tmp_path / "idx", train=8, test=8, gzipped=False)
  path = root / "train-images-idx3-ubyte"
  path.write_bytes(path.read_bytes()[:-10])
  with pytest.raises(SourceError, match="truncated"):
    read_idx(path)


def test_flat_folder_is_split_into_train_val_test(folder_dir):
  dataset = open_dataset(f"folder:{folder_dir}", SplitOptions(val_fraction=0.25, test_fraction=0.25))
  assert dataset.class_names == ("circle", "square", "triangle", "zigzag")
  assert {k: len(v) for k, v in dataset.splits.items()} == {"train": 48, "val": 24, "test": 24}
  record = dataset.split("val")[0]
  assert record["image"].shape == (20, 20, 3) and record["image"].dtype == np.uint8


def test_folder_with_split_subfolders_uses_them(tmp_path):
  root = write_folder_dataset(tmp_path / "f", per_class=3, splits=True)
  dataset = open_dataset(f"folder:{root}")
  assert {k: len(v) for k, v in dataset.splits.items()} == {"train": 12, "val": 12, "test": 12}


def test_folder_without_classes_names_the_path(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(SourceError, match="no class sub-folders"):
    open_dataset(f"folder:{tmp_path / 'empty'}")


def test_tfds_source_reads_array_record_through_mock_data():
  with tfds.testing.mock_data(num_examples=40):
    dataset = open_dataset("tfds:fashion_mnist", SplitOptions(val_fraction=0.25))
    assert dataset.class_names[0] == "T-shirt/top" and len(dataset.class_names) == 10
    assert len(dataset.split("val")) == 10 and len(dataset.split("train")) == 30
    record = dataset.split("test")[3]
    assert record["image"].shape == (28, 28, 1) and record["image"].dtype == np.uint8


def test_csv_and_labelstudio_sources_train_as_folders_do(tmp_path, folder_dir):
  """csv: (multi-label with `a;b`) and labelstudio: open directly, as prepare lists them."""
  rows = ["path,label,split"]
  tasks = []
  for i, path in enumerate(sorted(folder_dir.rglob("*.png"))):
    name = path.parent.name
    rows.append(f"{path},{name};zigzag,{'val' if i % 4 == 0 else 'train'}" if i % 3 == 0
                else f"{path},{name},{'val' if i % 4 == 0 else 'train'}")
    tasks.append({"id": i, "data": {"image": str(path)}, "annotations": [{"result": [
        {"type": "choices", "value": {"choices": [name]}}]}]})
  (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
  dataset = open_dataset(f"csv:{tmp_path / 'labels.csv'}")
  assert dataset.multi_label and dataset.class_names == ("circle", "square", "triangle", "zigzag")
  assert len(dataset.split("val")) == 24 and len(dataset.split("test")) == 7  # 10% of train, carved
  assert len(dataset.split("train")) == 72 - 7
  record = dataset.split("val")[0]  # rows 0, 12, ...: 'circle;zigzag'
  assert record["labels"].tolist() == [1, 0, 0, 1] and record["image"].shape == (20, 20, 3)
  (tmp_path / "export.json").write_text(json.dumps(tasks))
  dataset = open_dataset(f"labelstudio:{tmp_path / 'export.json'}")
  assert not dataset.multi_label and sum(len(s) for s in dataset.splits.values()) == 96
