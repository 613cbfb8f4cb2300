"""Serves exported models over REST (FastAPI on uvicorn), with micro-batching and A/B versions.

    python -m experiments.serve --model=exports/fmnist_onnx --port=8000
    python -m experiments.serve --model=exports/v1 --model=exports/v2 --traffic=0.9,0.1 --port=8000

Endpoints: POST /v1/predict, POST /v1/feedback, GET /v1/models, /healthz, /readyz, /metrics,
/ (web page), /docs (OpenAPI), and SageMaker's GET /ping + POST /invocations. Every
prediction is logged to --log (SQLite). See README "Serving".
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402
import uvicorn  # noqa: E402

from experiments import common  # noqa: E402
from vision.serve.app import ServeOptions, create_app  # noqa: E402
from vision.serve.images import Limits  # noqa: E402
from vision.serve.runtime import ExportError  # noqa: E402

_MODEL = flags.DEFINE_multi_string("model", None, "An experiments.export directory (onnx or "
                                   "tflite); repeat for several versions.")
_TRAFFIC = flags.DEFINE_list("traffic", None, "Traffic weights, one per --model, e.g. 0.9,0.1 "
                             "(default: equal).")
_SEED = flags.DEFINE_integer("seed", None, "Seed of the A/B router (default: random).")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Interface to listen on (0.0.0.0 for all).")
_PORT = flags.DEFINE_integer("port", 8000, "TCP port.")
_LOG = flags.DEFINE_string("log", "serving.db", "SQLite file every prediction is logged to.")
_MAX_BATCH = flags.DEFINE_integer("max_batch_size", 32, "Most images per model call.")
_MAX_WAIT = flags.DEFINE_float("max_wait_ms", 5.0, "How long the first image of a batch waits "
                               "for others.")
_TOP_K = flags.DEFINE_integer("top_k", 5, "Classes returned per image unless ?top_k= says.")
_API_KEY = flags.DEFINE_string("api_key", None, "Require this key in X-API-Key (default: "
                               "$VISION_API_KEY; none: open).")
_MAX_BYTES = flags.DEFINE_integer("max_request_bytes", 10 * 1024 * 1024, "Largest request body.")
_MAX_PIXELS = flags.DEFINE_integer("max_pixels", 40_000_000, "Largest image (width x height) "
                                   "decoded; guards against decompression bombs.")
_MAX_IMAGES = flags.DEFINE_integer("max_images", 64, "Most images in one request.")
_THREADS = flags.DEFINE_integer("threads", 0, "Runtime threads per model (0: the runtime's "
                                "default).")
flags.mark_flag_as_required("model")


def _traffic() -> list[float] | None:
  if _TRAFFIC.value is None:
    return None
  try:
    return [float(w) for w in _TRAFFIC.value]
  except ValueError:
    raise ValueError(f"--traffic={','.join(_TRAFFIC.value)}: expected numbers like 0.9,0.1")


def main(argv: list[str]) -> None:
  common.reject_extra_arguments(argv)
  try:
    options = ServeOptions(
        models=_MODEL.value, traffic=_traffic(), seed=_SEED.value, log_path=_LOG.value,
        max_batch_size=_MAX_BATCH.value, max_wait_ms=_MAX_WAIT.value, top_k=_TOP_K.value,
        api_key=_API_KEY.value or os.environ.get("VISION_API_KEY") or None,
        limits=Limits(_MAX_BYTES.value, _MAX_PIXELS.value, _MAX_IMAGES.value),
        threads=_THREADS.value)
    app = create_app(options)
  except (ExportError, ValueError) as error:
    common.fail(str(error))
  versions = ", ".join(f"{s.version} ({s.model.spec.format}, {s.weight:.0%})"
                       for s in app.state.states.values())
  print(f"serving {versions} on http://{_HOST.value}:{_PORT.value} (docs: /docs, "
        f"log: {_LOG.value})", flush=True)
  uvicorn.run(app, host=_HOST.value, port=_PORT.value, log_level="warning")


if __name__ == "__main__":
  common.run(main)
