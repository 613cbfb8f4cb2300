"""The REST app: predictions from exported models with micro-batching, A/B versions, logs.

    app = create_app(ServeOptions(models=["exports/v1", "exports/v2"], traffic=[0.9, 0.1]))
    uvicorn.run(app, host="127.0.0.1", port=8000)

Endpoints (OpenAPI docs at /docs, spec at /openapi.json):
  POST /v1/predict      multipart image files, a raw image body, or JSON base64
                        ({"image": B64} | {"images": [B64, ...]} | {"instances": [...]})
  POST /v1/feedback     {"id": PREDICTION_ID, "label": NAME or INDEX} -> per-version accuracy
  GET  /v1/models       versions, traffic weights, counts, latency, accuracy, batching
  GET  /healthz, /readyz, /metrics (Prometheus), / (the web page)
  GET  /ping, POST /invocations   SageMaker's container contract
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hmac
import json
import pathlib
import sqlite3
import threading
import time
import uuid
from typing import Any, Sequence

import fastapi
from fastapi import responses
from fastapi.security import APIKeyHeader
import numpy as np
import prometheus_client
import pydantic
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from vision.serve import images as image_io
from vision.serve.batcher import MicroBatcher
from vision.serve.images import Limits, RequestError
from vision.serve.log import Prediction, PredictionLog
from vision.serve.router import Router
from vision.serve.runtime import ExportError, ServedModel, compact_embedding, load_served

_PAGE = pathlib.Path(__file__).with_name("static") / "index.html"
_RECENT = 100_000  # predictions kept in memory for feedback without a database read


@dataclasses.dataclass(frozen=True)
class ServeOptions:
  """Everything `experiments.serve` configures."""
  models: Sequence[str]
  traffic: Sequence[float] | None = None
  seed: int | None = None
  log_path: str = "serving.db"
  max_batch_size: int = 32
  max_wait_ms: float = 5.0
  top_k: int = 5
  api_key: str | None = None
  limits: Limits = Limits()
  threads: int = 0


class VersionState:
  """One served model version: its batcher and running statistics."""

  def __init__(self, model: ServedModel, weight: float, options: ServeOptions,
               metrics: "Metrics"):
    self.model = model
    self.version = model.spec.version
    self.weight = weight
    self.requests = 0
    self.predictions = 0
    self.feedback = 0
    self.correct = 0
    self.latencies: collections.deque = collections.deque(maxlen=10_000)
    version = self.version

    def on_batch(size: int, seconds: float) -> None:
      metrics.batch_size.labels(version).observe(size)
      metrics.model_seconds.labels(version).observe(seconds)

    self.batcher = MicroBatcher(model.predict, max_batch_size=options.max_batch_size,
                                max_wait_ms=options.max_wait_ms, on_batch=on_batch,
                                name=f"batcher-{version}")

  def stats(self) -> dict:
    latencies = np.asarray(self.latencies) * 1000
    return {
        "version": self.version, "format": self.model.spec.format, "arch": self.model.spec.arch,
        "int8": self.model.spec.int8, "traffic": self.weight, "requests": self.requests,
        "predictions": self.predictions,
        "latency_ms_p50": float(np.percentile(latencies, 50)) if len(latencies) else None,
        "latency_ms_p99": float(np.percentile(latencies, 99)) if len(latencies) else None,
        "feedback": self.feedback,
        "accuracy": self.correct / self.feedback if self.feedback else None,
        "batching": self.batcher.stats.as_dict(),
        "input": {"height": self.model.spec.height, "width": self.model.spec.width,
                  "channels": self.model.spec.channels},
        "class_names": list(self.model.spec.class_names),
        "task": self.model.spec.task.to_json()}


class Metrics:
  """The app's Prometheus metrics, in its own registry."""

  def __init__(self):
    self.registry = prometheus_client.CollectorRegistry()
    r = self.registry
    self.requests = prometheus_client.Counter(
        "vision_http_requests", "HTTP requests by route and status", ["route", "status"],
        registry=r)
    self.predictions = prometheus_client.Counter(
        "vision_predictions", "Images predicted, per model version", ["version"], registry=r)
    self.latency = prometheus_client.Histogram(
        "vision_request_latency_seconds", "Prediction request latency, per version", ["version"],
        buckets=(.002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5), registry=r)
    self.batch_size = prometheus_client.Histogram(
        "vision_batch_size", "Images per model call (micro-batching)", ["version"],
        buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
    self.model_seconds = prometheus_client.Histogram(
        "vision_model_seconds", "Time per model call", ["version"], registry=r)
    self.feedback = prometheus_client.Counter(
        "vision_feedback", "Feedback received, per version and correctness",
        ["version", "correct"], registry=r)
    self.accuracy = prometheus_client.Gauge(
        "vision_accuracy", "Top-1 accuracy on predictions with feedback", ["version"], registry=r)


class Feedback(pydantic.BaseModel):
  """The true label of an earlier prediction."""
  id: str = pydantic.Field(description="The prediction id returned by /v1/predict")
  label: str | int = pydantic.Field(description="The true class: its name or its index")


class SizeLimit:
  """ASGI middleware: bodies over `max_bytes` get 413 before any parsing."""

  def __init__(self, app, max_bytes: int):
    self.app, self.max_bytes = app, max_bytes

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http":
      return await self.app(scope, receive, send)
    headers = dict(scope.get("headers") or [])
    length = headers.get(b"content-length")
    if length is not None and length.isdigit() and int(length) > self.max_bytes:
      return await self._reject(scope, receive, send, int(length))
    chunks, total = [], 0
    while True:
      message = await receive()
      if message["type"] != "http.request":
        chunks.append(message)
        break
      chunks.append(message)
      total += len(message.get("body", b""))
      if total > self.max_bytes:
        return await self._reject(scope, receive, send, total)
      if not message.get("more_body"):
        break
    replay = iter(chunks)

    async def replayed():
      try:
        return next(replay)
      except StopIteration:
        return await receive()

    return await self.app(scope, replayed, send)

  async def _reject(self, scope, receive, send, size: int):
    response = responses.JSONResponse(
        {"detail": f"request body of {size} bytes is over the limit of {self.max_bytes} "
                   "(--max_request_bytes)"}, status_code=413)
    await response(scope, receive, send)


class CountRequests:
  """ASGI middleware: counts responses by route and status (plain ASGI: no per-request task)."""

  def __init__(self, app, counter: prometheus_client.Counter):
    self.app, self.counter = app, counter

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http":
      return await self.app(scope, receive, send)
    status = []

    async def send_and_note(message):
      if message["type"] == "http.response.start":
        status.append(message["status"])
      await send(message)

    try:
      await self.app(scope, receive, send_and_note)
    finally:
      route = getattr(scope.get("route"), "path", "other")
      self.counter.labels(route, str(status[0] if status else 500)).inc()


_IMAGE_SCHEMA = {"type": "string", "format": "byte", "description": "base64 image (PNG, JPEG, ...)"}
_PREDICT_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "file": {"type": "string", "format": "binary"}}, "required": ["file"]}},
    "application/json": {"schema": {"type": "object", "properties": {
        "image": _IMAGE_SCHEMA,
        "images": {"type": "array", "items": _IMAGE_SCHEMA},
        "instances": {"type": "array", "items": {"oneOf": [
            _IMAGE_SCHEMA, {"type": "object", "properties": {"b64": _IMAGE_SCHEMA}},
            {"type": "object", "properties": {"image": {"oneOf": [
                _IMAGE_SCHEMA, {"type": "object", "properties": {"b64": _IMAGE_SCHEMA}}]}}}]}}}}},
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "image/jpeg": {"schema": {"type": "string", "format": "binary"}}}}}


def _json_images(body: Any) -> list[tuple[str, bytes]]:
  """(name, bytes) of every image in a JSON body, in order."""
  if not isinstance(body, dict):
    raise RequestError(400, 'JSON body must be an object: {"image": B64}, {"images": [B64, ...]} '
                       'or {"instances": [...]}')
  if "instances" in body:  # Vertex AI
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
      raise RequestError(400, '"instances" must be a non-empty list')
    found = []
    for i, instance in enumerate(instances):
      where = f"instances[{i}]"
      if isinstance(instance, dict):
        value = instance.get("b64", instance.get("image", instance.get("image_bytes")))
        if isinstance(value, dict):
          value = value.get("b64")
        if value is None:
          raise RequestError(400, f'{where}: expected a base64 string, {{"b64": ...}} or '
                             '{"image": {"b64": ...}}')
        instance = value
      found.append((where, image_io.decode_base64(instance, where)))
    return found
  if "images" in body:
    values = body["images"]
    if not isinstance(values, list) or not values:
      raise RequestError(400, '"images" must be a non-empty list of base64 strings')
    return [(f"images[{i}]", image_io.decode_base64(v, f"images[{i}]"))
            for i, v in enumerate(values)]
  if "image" in body:
    return [("image", image_io.decode_base64(body["image"], "image"))]
  raise RequestError(400, 'JSON body has none of "image", "images", "instances"')


async def _request_images(request: fastapi.Request) -> list[tuple[str, bytes]]:
  """(name, encoded bytes) of every image in the request, by its content type."""
  content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
  if content_type == "multipart/form-data":
    try:
      form = await request.form()
    except (StarletteHTTPException, AssertionError, ValueError) as error:
      detail = getattr(error, "detail", None) or str(error)
      raise RequestError(400, f"malformed multipart body: {detail}") from None
    found = []
    for field, value in form.multi_items():
      if isinstance(value, str):
        continue
      part_type = (value.content_type or "").split(";")[0].lower()
      if part_type and not (part_type.startswith("image/")
                            or part_type == "application/octet-stream"):
        raise RequestError(415, f"file {value.filename or field!r} has content type {part_type}; "
                           "send image/* files")
      found.append((value.filename or field, await value.read()))
    if not found:
      raise RequestError(400, "the multipart body has no files; send images as file fields "
                         "(e.g. curl -F file=@shoe.png)")
    return found
  if content_type in ("application/json", "application/jsonlines"):
    try:
      body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as error:
      raise RequestError(400, f"body is not valid JSON ({error})") from None
    return _json_images(body)
  if content_type.startswith("image/") or content_type in ("application/x-image",
                                                            "application/octet-stream"):
    return [("body", await request.body())]
  raise RequestError(415, f"content type {content_type or '(none)'} is not supported; send "
                     "multipart/form-data, application/json (base64) or image/*")


def create_app(options: ServeOptions) -> fastapi.FastAPI:
  """The app for `options`; raises ExportError (before serving) for a bad model directory."""
  if not options.models:
    raise ExportError("give at least one --model=EXPORT_DIR")
  if options.traffic is not None and len(options.traffic) != len(options.models):
    raise ExportError(f"--traffic has {len(options.traffic)} weights for {len(options.models)} "
                      "--model directories; give one weight per model")
  models = [load_served(path, options.threads) for path in options.models]
  versions = [m.spec.version for m in models]
  if len(set(versions)) != len(versions):
    raise ExportError(f"two --model directories have the same version {versions}; "
                      "re-export one with another version")
  try:
    router = Router(versions, options.traffic, seed=options.seed)
  except ValueError as error:
    raise ExportError(str(error)) from None
  metrics = Metrics()
  states = {v: VersionState(m, float(w), options, metrics)
            for v, m, w in zip(versions, models, router.weights)}
  prediction_log = PredictionLog(options.log_path)
  recent: collections.OrderedDict = collections.OrderedDict()
  recent_lock = threading.Lock()

  @contextlib.asynccontextmanager
  async def lifespan(_):
    yield
    for state in states.values():
      state.batcher.close()
    prediction_log.close()

  app = fastapi.FastAPI(
      title="vision serving", version="1", lifespan=lifespan,
      description="Image classification with exported vision models: micro-batched, A/B "
                  "versions, Prometheus metrics, SQLite prediction log.")
  app.state.states, app.state.log, app.state.router = states, prediction_log, router
  api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)

  def check_key(request: fastapi.Request, key: str | None = fastapi.Security(api_key_header)):
    if options.api_key is None:
      return
    bearer = request.headers.get("authorization", "")
    given = key or (bearer[7:] if bearer.lower().startswith("bearer ") else "")
    if not hmac.compare_digest(given.encode(), options.api_key.encode()):
      raise RequestError(401, "missing or wrong API key: send the header X-API-Key: KEY "
                         "(or Authorization: Bearer KEY)")

  @app.exception_handler(RequestError)
  async def request_error(_, error: RequestError):
    return responses.JSONResponse({"detail": error.message}, status_code=error.status)

  async def predict(request: fastapi.Request, version: str | None, top_k: int | None,
                    raw_probabilities: bool = False) -> dict:
    start = time.perf_counter()
    if version is not None and version not in states:
      raise RequestError(404, f"no model version {version!r}; serving {versions}")
    k = options.top_k if top_k is None else top_k
    if not 1 <= k <= 1000:
      raise RequestError(422, f"top_k must be between 1 and 1000, got {k}")
    encoded = await _request_images(request)
    if len(encoded) > options.limits.max_images:
      raise RequestError(413, f"{len(encoded)} images in one request is over the limit of "
                         f"{options.limits.max_images} (--max_images)")
    state = states[version or router.pick()]
    spec = state.model.spec
    decoded = await run_in_threadpool(lambda: [image_io.decode_upload(
        data, options.limits, height=spec.height, width=spec.width, channels=spec.channels,
        resize_size=spec.resize_size, interpolation=spec.interpolation,
        where=name) for name, data in encoded])
    outputs = await asyncio.gather(
        *(asyncio.wrap_future(state.batcher.submit(image)) for image in decoded))
    now = time.time()
    predictions = []
    # The task's probabilities carry the temperature fitted on validation (export.json).
    task = spec.task.uncalibrated() if raw_probabilities else spec.task
    for logits, embedding in outputs:
      probs = task.probabilities(logits[None])[0]
      # The log and feedback follow one answer: the model's (a multi-task model's first head).
      primary = probs[spec.task.primary[0]]
      top1 = int(np.argmax(primary))
      prediction_id = uuid.uuid4().hex
      prediction_log.record(Prediction(
          prediction_id, now, state.version, top1, spec.class_names[top1], float(primary[top1]),
          compact_embedding(embedding[None])[0]))
      with recent_lock:
        recent[prediction_id] = (state.version, top1)
        if len(recent) > _RECENT:
          recent.popitem(last=False)
      predictions.append({"id": prediction_id, **task.predictions(probs, k)})
    seconds = time.perf_counter() - start
    state.requests += 1
    state.predictions += len(predictions)
    state.latencies.append(seconds)
    metrics.predictions.labels(state.version).inc(len(predictions))
    metrics.latency.labels(state.version).observe(seconds)
    return {"version": state.version, "predictions": predictions}

  @app.post("/v1/predict", tags=["predict"], openapi_extra=_PREDICT_BODY,
            dependencies=[fastapi.Depends(check_key)],
            summary="Top-k classes of one or more images")
  async def predict_endpoint(request: fastapi.Request, version: str | None = None,
                             top_k: int | None = None, raw_probabilities: bool = False) -> dict:
    """Returns {"version": V, "predictions": [{"id", "top": [{"label", "index", "prob"}]}]}.

    A multi-task model answers per head: {"id", "tasks": {HEAD: {"top": [...]}}}; a
    multi-label one adds "labels" (the classes over their thresholds). `version` pins a
    model version (bypassing the A/B split); `top_k` defaults to 5. Probabilities are
    temperature-scaled (the temperature fitted on validation, from export.json);
    `raw_probabilities=true` answers without the scaling.
    """
    return await predict(request, version, top_k, raw_probabilities)

  @app.post("/invocations", tags=["sagemaker"], openapi_extra=_PREDICT_BODY,
            dependencies=[fastapi.Depends(check_key)], summary="SageMaker inference")
  async def invocations(request: fastapi.Request) -> dict:
    return await predict(request, None, None)

  @app.post("/v1/feedback", tags=["predict"], dependencies=[fastapi.Depends(check_key)],
            summary="The true label of a prediction (per-version accuracy)")
  async def feedback(body: Feedback) -> dict:
    with recent_lock:
      found = recent.get(body.id)
    if found is None:
      found = await run_in_threadpool(_logged_prediction, prediction_log, body.id)
    if found is None:
      raise RequestError(404, f"no prediction with id {body.id!r}")
    version, top1 = found
    names = states[version].model.spec.class_names if version in states else ()
    if isinstance(body.label, int):
      if not 0 <= body.label < len(names):
        raise RequestError(422, f"label index {body.label} is out of range 0..{len(names) - 1}")
      true_index = body.label
    elif body.label in names:
      true_index = names.index(body.label)
    else:
      raise RequestError(422, f"unknown label {body.label!r}; one of {list(names)}")
    correct = true_index == top1
    prediction_log.feedback(body.id, true_index)
    state = states[version]
    state.feedback += 1
    state.correct += correct
    metrics.feedback.labels(version, str(correct).lower()).inc()
    metrics.accuracy.labels(version).set(state.correct / state.feedback)
    return {"id": body.id, "version": version, "correct": correct,
            "accuracy": state.correct / state.feedback}

  @app.get("/v1/models", tags=["status"], summary="Versions, traffic split and statistics")
  async def models_endpoint() -> dict:
    return {"models": [state.stats() for state in states.values()]}

  def ready() -> bool:
    return prediction_log.alive and all(s.batcher.alive for s in states.values())

  @app.get("/healthz", tags=["status"], summary="Liveness")
  async def healthz() -> dict:
    return {"status": "ok"}

  @app.get("/readyz", tags=["status"], summary="Readiness: models loaded, workers running")
  async def readyz():
    if not ready():
      return responses.JSONResponse({"status": "not ready"}, status_code=503)
    return {"status": "ready", "versions": versions}

  @app.get("/ping", tags=["sagemaker"], summary="SageMaker health check")
  async def ping():
    return responses.Response(status_code=200 if ready() else 503)

  @app.get("/metrics", tags=["status"], summary="Prometheus metrics")
  async def metrics_endpoint():
    return responses.Response(prometheus_client.generate_latest(metrics.registry),
                              media_type=prometheus_client.CONTENT_TYPE_LATEST)

  @app.get("/", include_in_schema=False)
  async def page():
    return responses.HTMLResponse(_PAGE.read_text(encoding="utf-8"))

  app.add_middleware(SizeLimit, max_bytes=options.limits.max_request_bytes)
  app.add_middleware(CountRequests, counter=metrics.requests)
  return app


def _logged_prediction(prediction_log: PredictionLog, prediction_id: str):
  """(version, top1) of a prediction older than the in-memory window, or None."""
  prediction_log.flush()
  with sqlite3.connect(prediction_log.path) as connection:
    row = connection.execute("SELECT version, top1 FROM predictions WHERE id = ?",
                             (prediction_id,)).fetchone()
  return tuple(row) if row else None
