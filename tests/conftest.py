"""Shared fixtures: tiny real datasets on disk, offline W&B, and running entry points."""

from __future__ import annotations

import gzip
import os
import pathlib
import struct
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

# One persistent XLA compilation cache for the whole test run, its xdist workers and every
# command a test starts (they inherit the environment): the same tiny programs compile in
# dozens of tests and subprocesses. Set before anything imports JAX, which reads these once.
# A run that sets JAX_COMPILATION_CACHE_DIR itself (or to "" to turn it off) keeps its own.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO / ".pytest_cache" / "jax-compilation"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))  # LRU beyond 4 GiB
NUM_CLASSES = 4
SIZE = 16


def class_pattern(label: int, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
  """A noisy image whose bright quadrant is its class: learnable in a few steps."""
  image = rng.integers(0, 60, size=(size, size), dtype=np.uint8)
  half = size // 2
  top, left = divmod(label % 4, 2)
  image[top * half:(top + 1) * half, left * half:(left + 1) * half] += 180
  return image


def make_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  labels = np.arange(count) % NUM_CLASSES
  rng.shuffle(labels)
  return np.stack([class_pattern(int(l), rng) for l in labels]), labels.astype(np.uint8)


def write_idx(path: pathlib.Path, array: np.ndarray, gzipped: bool) -> None:
  header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
  data = header + array.astype(np.uint8).tobytes()
  path.write_bytes(gzip.compress(data) if gzipped else data)


def write_idx_dataset(root: pathlib.Path, *, train: int = 512, test: int = 128,
                      gzipped: bool = True) -> pathlib.Path:
  root.mkdir(parents=True, exist_ok=True)
  suffix = ".gz" if gzipped else ""
  for prefix, count, seed in (("train", train, 0), ("t10k", test, 1)):
    images, labels = make_images(count, seed)
    write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images, gzipped)
    write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gzipped)
  return root


@pytest.fixture
def idx_dir(tmp_path) -> pathlib.Path:
  return write_idx_dataset(tmp_path / "idx")


def write_folder_dataset(root: pathlib.Path, per_class: int = 24, splits: bool = False) -> pathlib.Path:
  names = ("circle", "square", "triangle", "zigzag")
  rng = np.random.default_rng(3)
  for split in (("train", "val", "test") if splits else ("",)):
    for label, name in enumerate(names):
      folder = root / split / name
      folder.mkdir(parents=True, exist_ok=True)
      for i in range(per_class):
        grey = class_pattern(label, rng, size=20)
        rgb = np.stack([grey, grey // 2, 255 - grey], axis=-1).astype(np.uint8)
        Image.fromarray(rgb).save(folder / f"{i:03d}.png")
  return root


@pytest.fixture
def folder_dir(tmp_path) -> pathlib.Path:
  return write_folder_dataset(tmp_path / "folder")


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch, tmp_path):
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
  monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))


def child_env(**extra: str) -> dict[str, str]:
  """The environment for a command the test starts, as a fresh shell would give it.

  WANDB_SERVICE is dropped: an in-process W&B run of an earlier test sets it,
  and a child would otherwise share (and, killed, leave a stream in) that service.
  """
  env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
  env["JAX_PLATFORMS"] = "cpu"
  env.update(extra)
  return env


def run_module(module: str, *args: str, devices: int = 1, timeout: float = 600,
               check: bool = True, extra_env: dict | None = None) -> subprocess.CompletedProcess:
  """Runs `python -m module args...` from the repo root, as a user would."""
  env = child_env()
  env["XLA_FLAGS"] = " ".join([
      f"--xla_force_host_platform_device_count={devices}",
      # Fail in seconds, not a minute, if CPU collectives ever get stuck.
      "--xla_cpu_collective_call_terminate_timeout_seconds=30",
      "--xla_cpu_collective_call_warn_stuck_timeout_seconds=10"] if devices > 1 else [])
  env.update(extra_env or {})
  result = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
  if check and result.returncode != 0:
    raise AssertionError(
        f"{module} {' '.join(args)} exited {result.returncode}\n"
        f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-8000:]}")
  return result


def tiny_config(source: str, steps: int = 12):
  """The config of tests/configs/tiny.py, for in-process runs."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location("tiny_config", REPO / "tests/configs/tiny.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(f"source={source},steps={steps}")


def read_idx_labels(path: pathlib.Path) -> np.ndarray:
  """The labels of an IDX label file written by `write_idx`."""
  return np.frombuffer(gzip.decompress(path.read_bytes()), np.uint8, offset=8).copy()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> pathlib.Path:
  """A trained model directory (tests/configs/tiny.py, 12 steps on the quadrant task), made once.

  16×16 grey images, 4 classes ("a".."d"), validation split of 64 images. Shared
  by the export and serving tests: treat it as read-only.
  """
  root = tmp_path_factory.mktemp("tiny_model")
  data = write_idx_dataset(root / "idx")
  workdir = root / "run"
  run_module("experiments.train", f"--config=tests/configs/tiny.py:source=idx:{data}",
             f"--workdir={workdir}", "--config.data.class_names=('a','b','c','d')",
             extra_env={"WANDB_MODE": "offline", "WANDB_SILENT": "true",
                        "WANDB_CONFIG_DIR": str(root / "wandb-config"),
                        "WANDB_CACHE_DIR": str(root / "wandb-cache")})
  return workdir


@pytest.fixture(scope="session")
def quadrant_run(tmp_path_factory) -> pathlib.Path:
  """A small CNN trained in-process (150 steps) on tests/quadrant_data.py, made once.

  32×32 grey images whose class (a texture) sits in a random quadrant; test
  accuracy 1.0. Its end of training fitted the temperature and wrote eval/test/
  (report.json, plots, report.html) and an offline W&B run. Treat it as read-only.
  """
  import quadrant_data  # pylint: disable=import-outside-toplevel
  from vision.train import loop  # pylint: disable=import-outside-toplevel

  root = tmp_path_factory.mktemp("quadrant")
  data = quadrant_data.write_quadrant_idx(root / "idx")
  config = tiny_config(f"idx:{data}", steps=150)
  config.data.class_names = quadrant_data.CLASS_NAMES
  config.train.batch_size = 64
  config.train.eval_every_steps = 75
  config.train.log_every_steps = 50
  with pytest.MonkeyPatch.context() as patch:
    for key, value in (("WANDB_MODE", "offline"), ("WANDB_SILENT", "true"),
                       ("WANDB_CONFIG_DIR", str(root / "wandb-config")),
                       ("WANDB_CACHE_DIR", str(root / "wandb-cache"))):
      patch.setenv(key, value)
    loop.train(config, root / "run")
  return root / "run"
