"""Serving benchmark: starts the server in its own process and drives it over loopback.

    python -m experiments.benchmark_serving --model=exports/fmnist_onnx \
        [--requests=1000 --concurrency=16 --max_batch_size=32 --max_wait_ms=5] [--out=FILE]
    python -m experiments.benchmark_serving --url=http://127.0.0.1:8000   # a running server

Each request is one PNG upload to POST /v1/predict (--image, default a seeded noise
image at the model's input size). Prints throughput, p50/p90/p99 latency, errors and
the server's micro-batching statistics as JSON.
"""

import asyncio
import io
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

from absl import flags
import httpx
import numpy as np
from PIL import Image

from experiments import common
from vision.files import write_text_atomically
from vision.serve.loadtest import drive

_MODEL = flags.DEFINE_multi_string("model", None, "Export directories to serve (started here).")
_URL = flags.DEFINE_string("url", None, "Drive this running server instead of starting one.")
_REQUESTS = flags.DEFINE_integer("requests", 1000, "Requests to send.")
_CONCURRENCY = flags.DEFINE_integer("concurrency", 16, "Requests in flight.")
_MAX_BATCH = flags.DEFINE_integer("max_batch_size", 32, "Server's --max_batch_size.")
_MAX_WAIT = flags.DEFINE_float("max_wait_ms", 5.0, "Server's --max_wait_ms.")
_THREADS = flags.DEFINE_integer("threads", 0, "Server's --threads.")
_IMAGE = flags.DEFINE_string("image", None, "Image file to send (default: noise at model size).")
_API_KEY = flags.DEFINE_string("api_key", None, "API key of a --url server.")
_OUT = flags.DEFINE_string("out", None, "Also write the JSON report here.")


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def _noise_png(model_dir: str | None) -> bytes:
  height, width, channels = 28, 28, 1
  if model_dir:
    spec = json.loads((pathlib.Path(model_dir) / "export.json").read_text())["input"]
    height, width, channels = spec["height"], spec["width"], spec["channels"]
  pixels = np.random.default_rng(0).integers(0, 256, (height, width, channels), np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(buffer, format="PNG")
  return buffer.getvalue()


def wait_ready(url: str, process: subprocess.Popen | None, timeout: float = 120) -> None:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if process is not None and process.poll() is not None:
      raise RuntimeError(f"the server exited with status {process.returncode}")
    try:
      if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
        return
    except httpx.HTTPError:
      pass
    time.sleep(0.2)
  raise RuntimeError(f"the server at {url} was not ready after {timeout:.0f} s")


def main(argv: list[str]) -> None:
  common.reject_extra_arguments(argv)
  if not _MODEL.value and not _URL.value:
    common.fail("give --model=EXPORT_DIR (a server is started) or --url=http://HOST:PORT")
  image = (pathlib.Path(_IMAGE.value).read_bytes() if _IMAGE.value
           else _noise_png(_MODEL.value[0] if _MODEL.value else None))
  process, url = None, _URL.value
  with tempfile.TemporaryDirectory() as tmp:
    if url is None:
      port = _free_port()
      url = f"http://127.0.0.1:{port}"
      command = [sys.executable, "-m", "experiments.serve", f"--port={port}",
                 f"--log={tmp}/serving.db", f"--max_batch_size={_MAX_BATCH.value}",
                 f"--max_wait_ms={_MAX_WAIT.value}", f"--threads={_THREADS.value}",
                 *(f"--model={m}" for m in _MODEL.value)]
      env = {k: v for k, v in os.environ.items() if k != "VISION_API_KEY"}
      process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    try:
      wait_ready(url, process)
      # A short warm-up, so first-call costs are not in the figures.
      asyncio.run(drive(url, image, requests=2 * _CONCURRENCY.value,
                        concurrency=_CONCURRENCY.value, api_key=_API_KEY.value))
      report = asyncio.run(drive(url, image, requests=_REQUESTS.value,
                                 concurrency=_CONCURRENCY.value, api_key=_API_KEY.value))
      report["server"] = httpx.get(f"{url}/v1/models", timeout=10).json()["models"]
      for model in report["server"]:
        model.pop("class_names", None)
    finally:
      if process is not None:
        process.terminate()
        process.wait(timeout=30)
  text = json.dumps(report, indent=2)
  print(text)
  if _OUT.value:
    write_text_atomically(_OUT.value, text)
  if report["errors"]:
    sys.exit(1)


if __name__ == "__main__":
  common.run(main)
