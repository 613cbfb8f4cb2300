"""The REST server end to end: real uvicorn on loopback, real exported models, real uploads."""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import io
import json
import pathlib
import socket
import threading
import time

import httpx
import numpy as np
from PIL import Image
import pytest

from conftest import NUM_CLASSES, class_pattern, run_module
from vision.serve.app import ServeOptions, create_app
from vision.serve.images import Limits
from vision.serve.log import read_predictions

# Each test needs the tiny model trained and exported (about a minute): end to end, so slow.
# The fast, model-free checks of the same parts are in tests/test_serve_parts.py.
pytestmark = pytest.mark.slow
LABELS = ("a", "b", "c", "d")


# ------------------------------------------------------------------------- helpers

def encode(image: np.ndarray, fmt: str = "PNG") -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image).save(
      buffer, format=fmt)
  return buffer.getvalue()


def labelled_images(count: int, seed: int = 5) -> tuple[list[np.ndarray], list[int]]:
  """Images of the tiny model's task (its bright quadrant is its class)."""
  rng = np.random.default_rng(seed)
  labels = [i % NUM_CLASSES for i in range(count)]
  return [class_pattern(label, rng) for label in labels], labels


def free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(options: ServeOptions):
  """uvicorn serving create_app(options) on a free loopback port, in a thread."""
  import uvicorn  # pylint: disable=import-outside-toplevel
  app = create_app(options)
  server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(),
                                         log_level="warning", lifespan="on"))
  thread = threading.Thread(target=server.run, daemon=True)
  thread.start()
  deadline = time.monotonic() + 30
  while not server.started:
    assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
    time.sleep(0.02)
  try:
    yield f"http://127.0.0.1:{server.config.port}", app
  finally:
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def exports(tiny_model_dir, tmp_path_factory) -> dict[str, pathlib.Path]:
  """The tiny model exported twice: ONNX as version v1 and TFLite as version v2."""
  from vision.export import export_workdir  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("exports")
  dirs = {"v1": root / "onnx", "v2": root / "tflite"}
  export_workdir(tiny_model_dir, "onnx", dirs["v1"], version="v1", max_examples=16,
                 latency_repeats=1)
  export_workdir(tiny_model_dir, "tflite", dirs["v2"], version="v2", max_examples=16,
                 latency_repeats=1)
  return dirs


@pytest.fixture(scope="module")
def server(exports, tmp_path_factory):
  """Two versions, a seeded 75/25 split, a 50 ms batching window and small limits."""
  log = tmp_path_factory.mktemp("serving") / "serving.db"
  options = ServeOptions(
      models=[str(exports["v1"]), str(exports["v2"])], traffic=[0.75, 0.25], seed=0,
      log_path=str(log), max_batch_size=8, max_wait_ms=50,
      limits=Limits(max_request_bytes=200_000, max_pixels=1_000_000, max_images=8))
  with running_server(options) as (url, app):
    yield url, app


def predict_file(url: str, data: bytes, name: str = "x.png", content_type: str = "image/png",
                 **params) -> httpx.Response:
  return httpx.post(f"{url}/v1/predict", files={"file": (name, data, content_type)},
                    params=params, timeout=30)


# --------------------------------------------------------------------------- tests

def test_predicts_png_and_jpeg_uploads_with_labels_and_version(server):
  url, _ = server
  images, labels = labelled_images(8)
  for image, label in zip(images, labels):
    for fmt, content_type in (("PNG", "image/png"), ("JPEG", "image/jpeg")):
      response = predict_file(url, encode(image, fmt), f"x.{fmt.lower()}", content_type)
      assert response.status_code == 200, response.text
      body = response.json()
      assert body["version"] in ("v1", "v2")
      (prediction,) = body["predictions"]
      top = prediction["top"]
      assert [t["label"] for t in top][0] == LABELS[label]
      assert len(top) == 4 and sorted(t["label"] for t in top) == list(LABELS)
      assert abs(sum(t["prob"] for t in top) - 1) < 1e-4
      assert top == sorted(top, key=lambda t: -t["prob"]) and len(prediction["id"]) == 32
  # A larger RGB photo-like image is converted and resized to the model's 16x16 grey input.
  big = np.repeat(np.kron(images[1], np.ones((5, 4), np.uint8))[..., None], 3, axis=-1)
  response = predict_file(url, encode(big), top_k=2)
  assert response.status_code == 200 and len(response.json()["predictions"][0]["top"]) == 2
  assert response.json()["predictions"][0]["top"][0]["label"] == LABELS[labels[1]]


def test_answers_are_temperature_scaled_unless_raw_probabilities_is_asked(server, exports):
  url, _ = server
  temperature = json.loads((exports["v1"] / "export.json").read_text())["task"]["temperature"]
  assert temperature != 1.0  # fitted on validation at the end of training
  images, _ = labelled_images(1, seed=5)
  answers = {}
  for raw in (False, True):
    response = predict_file(url, encode(images[0]), version="v1", raw_probabilities=raw)
    assert response.status_code == 200, response.text
    answers[raw] = {t["label"]: t["prob"] for t in response.json()["predictions"][0]["top"]}
  # softmax(z / T) is softmax(log p_raw / T): the calibrated answer follows from the raw one.
  scaled = {k: np.exp(np.log(max(p, 1e-30)) / temperature) for k, p in answers[True].items()}
  total = sum(scaled.values())
  for label, prob in answers[False].items():
    assert prob == pytest.approx(scaled[label] / total, abs=2e-3)
  assert max(answers[False], key=answers[False].get) == max(answers[True], key=answers[True].get)


def test_predict_and_server_see_exif_rotated_and_transparent_files_alike(server, tiny_model_dir,
                                                                         tmp_path):
  """experiments.predict and /v1/predict on the same files: upright, on white, same answer.

  The tiny model's class is its bright quadrant, so reading the phone photo sideways
  or the transparent PNG's hidden black gives another class (checked below).
  """
  from vision.evaluate.predict import predict_files  # pylint: disable=import-outside-toplevel

  def predict(paths):
    return [r["top"] for r in predict_files(tiny_model_dir, [str(p) for p in paths])]

  url, _ = server
  rng = np.random.default_rng(11)
  black = tmp_path / "black.png"
  black.write_bytes(encode(np.zeros((16, 16), np.uint8)))
  sideways = tmp_path / "sideways.png"  # the phone photo's pixels as stored
  upright = class_pattern(0, rng)  # bright top-left: "a"; stored turned 90° anticlockwise
  sideways.write_bytes(encode(np.ascontiguousarray(np.rot90(upright))))
  raw_tops = predict([sideways, black])
  assert raw_tops[0][0]["label"] != "a"
  hidden_label = next(i for i in (1, 2, 3, 0) if LABELS[i] != raw_tops[1][0]["label"])
  exif = Image.Exif()
  exif[0x0112] = 6  # "rotate 90° clockwise to display"
  jpeg = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(np.rot90(upright))).save(jpeg, format="JPEG", quality=95,
                                                                exif=exif)
  rgba = np.zeros((16, 16, 4), np.uint8)  # black everywhere; the picture lives in the alpha
  rgba[..., 3] = 255 - class_pattern(hidden_label, rng)  # on white: 255 - alpha = the picture
  files = {"phone.jpg": (jpeg.getvalue(), "image/jpeg", "a"),
           "transparent.png": (encode(rgba), "image/png", LABELS[hidden_label])}
  for name, (data, _, _) in files.items():
    (tmp_path / name).write_bytes(data)
  for (name, (data, content_type, label)), top in zip(files.items(),
                                                       predict(tmp_path / n for n in files)):
    response = predict_file(url, data, name, content_type, version="v1")
    assert response.status_code == 200, response.text
    served = response.json()["predictions"][0]["top"]
    assert top[0]["label"] == served[0]["label"] == label, (name, top, served)
    np.testing.assert_allclose([t["prob"] for t in served],
                               [{t["label"]: t["prob"] for t in top}[s["label"]] for s in served],
                               atol=1e-4, err_msg=name)


def test_json_base64_vertex_instances_and_sagemaker_invocations(server):
  url, _ = server
  images, labels = labelled_images(3, seed=9)
  b64 = [base64.b64encode(encode(image)).decode() for image in images]
  expected = [LABELS[label] for label in labels]
  top1 = lambda body: [p["top"][0]["label"] for p in body["predictions"]]  # noqa: E731
  response = httpx.post(f"{url}/v1/predict", json={"image": b64[0]})
  assert response.status_code == 200 and top1(response.json()) == expected[:1]
  response = httpx.post(f"{url}/v1/predict", json={"images": b64})
  assert response.status_code == 200 and top1(response.json()) == expected
  instances = [{"b64": b64[0]}, {"image": {"b64": b64[1]}}, b64[2]]
  response = httpx.post(f"{url}/v1/predict", json={"instances": instances})
  assert response.status_code == 200 and top1(response.json()) == expected
  assert httpx.get(f"{url}/ping").status_code == 200
  response = httpx.post(f"{url}/invocations", content=encode(images[0]),
                        headers={"content-type": "image/png"})
  assert response.status_code == 200 and top1(response.json()) == expected[:1]
  response = httpx.post(f"{url}/invocations", json={"instances": [{"b64": b64[1]}]})
  assert response.status_code == 200 and top1(response.json()) == expected[1:2]
  for path in ("/healthz", "/readyz", "/docs", "/openapi.json", "/"):
    assert httpx.get(f"{url}{path}").status_code == 200, path


def test_concurrent_requests_are_micro_batched(server):
  url, app = server
  images, _ = labelled_images(16, seed=11)
  before = {v: s.batcher.stats.as_dict() for v, s in app.state.states.items()}
  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    responses = list(pool.map(lambda image: predict_file(url, encode(image), version="v1"),
                              images))
  assert all(r.status_code == 200 for r in responses)
  after = httpx.get(f"{url}/v1/models").json()["models"][0]
  assert after["version"] == "v1"
  batches = after["batching"]["batches"] - before["v1"]["batches"]
  assert after["batching"]["images"] - before["v1"]["images"] == 16
  assert batches < 16 and after["batching"]["max_batch_size"] > 1  # some calls served several
  metrics = httpx.get(f"{url}/metrics").text
  assert 'vision_batch_size_count{version="v1"}' in metrics
  assert 'vision_predictions_total{version="v1"}' in metrics


def test_traffic_is_split_by_weight_and_counted_per_version(server):
  url, _ = server
  counts_before = {m["version"]: m["requests"]
                   for m in httpx.get(f"{url}/v1/models").json()["models"]}
  payload = {"image": base64.b64encode(encode(labelled_images(1)[0][0])).decode()}
  with httpx.Client(base_url=url) as client:
    versions = [client.post("/v1/predict", json=payload).json()["version"] for _ in range(120)]
  share = versions.count("v2") / len(versions)
  assert 0.15 < share < 0.35, share  # 25% +- 2.5 standard deviations
  models = {m["version"]: m for m in httpx.get(f"{url}/v1/models").json()["models"]}
  assert models["v1"]["traffic"] == 0.75 and models["v2"]["traffic"] == 0.25
  for version in ("v1", "v2"):
    assert models[version]["requests"] - counts_before[version] == versions.count(version)
    assert models[version]["latency_ms_p50"] > 0
    assert models[version]["latency_ms_p99"] >= models[version]["latency_ms_p50"]


def test_feedback_gives_per_version_accuracy_and_lands_in_sqlite(server):
  url, app = server
  images, labels = labelled_images(8, seed=21)
  ids = []
  for image in images:
    body = predict_file(url, encode(image), version="v2").json()
    ids.append(body["predictions"][0]["id"])
  before = next(m for m in httpx.get(f"{url}/v1/models").json()["models"] if m["version"] == "v2")
  # The model is right on these images: true labels for 6, a wrong one for 2.
  wrong = {0: (labels[0] + 1) % 4, 1: LABELS[(labels[1] + 2) % 4]}
  for i, (prediction_id, label) in enumerate(zip(ids, labels)):
    given = wrong.get(i, LABELS[label] if i % 2 else label)
    response = httpx.post(f"{url}/v1/feedback", json={"id": prediction_id, "label": given})
    assert response.status_code == 200, response.text
    assert response.json()["correct"] == (i not in wrong) and response.json()["version"] == "v2"
  after = next(m for m in httpx.get(f"{url}/v1/models").json()["models"] if m["version"] == "v2")
  assert after["feedback"] - before["feedback"] == 8
  correct = after["accuracy"] * after["feedback"] - (before["accuracy"] or 0) * before["feedback"]
  assert round(correct) == 6
  assert 'vision_accuracy{version="v2"}' in httpx.get(f"{url}/metrics").text
  assert httpx.post(f"{url}/v1/feedback", json={"id": "nope", "label": 1}).status_code == 404
  assert httpx.post(f"{url}/v1/feedback", json={"id": ids[0], "label": "zebra"}).status_code == 422
  assert httpx.post(f"{url}/v1/feedback", json={"id": ids[0], "label": 9}).status_code == 422
  assert httpx.post(f"{url}/v1/feedback", json={"label": 1}).status_code == 422

  app.state.log.flush()
  logged = read_predictions(app.state.log.path, version="v2")
  rows = {i: n for n, i in enumerate(logged.ids)}
  assert set(ids) <= set(rows)
  for i, (prediction_id, label) in enumerate(zip(ids, labels)):
    row = rows[prediction_id]
    assert logged.top1[row] == label and 0.25 < logged.confidence[row] <= 1
    expected_true = wrong[i] if i in wrong else label
    assert logged.true_label[row] == (LABELS.index(expected_true) if isinstance(expected_true, str)
                                      else expected_true)
  assert logged.embedding.shape[1] == 64 and logged.embedding.dtype == np.float32
  assert np.isfinite(logged.embedding).all() and np.abs(logged.embedding).sum() > 0


def test_limits_and_malformed_requests_get_clear_4xx(server):
  url, _ = server
  image = encode(labelled_images(1)[0][0])
  b64 = base64.b64encode(image).decode()
  cases = {
      "body over max_request_bytes": (413, dict(content=b"\0" * 300_000,
                                                headers={"content-type": "image/png"})),
      "decompression bomb": (413, dict(files={"file": ("bomb.png", encode(
          np.zeros((1500, 1500), np.uint8)), "image/png")})),
      "text content type": (415, dict(content=b"hello", headers={"content-type": "text/plain"})),
      "no content type": (415, dict(content=b"hello")),
      "text file part": (415, dict(files={"file": ("a.txt", b"hello", "text/plain")})),
      "not an image": (400, dict(files={"file": ("x.png", b"not a png", "image/png")})),
      "unsupported format": (415, dict(files={"file": ("x.ico", encode(
          np.zeros((16, 16, 3), np.uint8), "ICO"), "image/x-icon")})),
      "empty file": (400, dict(files={"file": ("x.png", b"", "image/png")})),
      "no files": (400, dict(files={"name": (None, "x")})),
      "bad base64": (400, dict(json={"image": "***"})),
      "base64 not an image": (400, dict(json={"image": base64.b64encode(b"abc").decode()})),
      "json not an object": (400, dict(json=[b64])),
      "json without images": (400, dict(json={"picture": b64})),
      "empty instances": (400, dict(json={"instances": []})),
      "bad instance": (400, dict(json={"instances": [{"x": 1}]})),
      "invalid json": (400, dict(content=b"{nope", headers={"content-type": "application/json"})),
      "broken multipart": (400, dict(content=b"--xx\r\nbroken",
                                     headers={"content-type": "multipart/form-data; boundary=xx"})),
      "too many images": (413, dict(json={"images": [b64] * 9})),
  }
  for name, (status, request) in cases.items():
    response = httpx.post(f"{url}/v1/predict", timeout=30, **request)
    assert response.status_code == status, (name, response.status_code, response.text)
    detail = response.json()["detail"]
    assert isinstance(detail, str) and 10 < len(detail) < 300, (name, detail)
  assert predict_file(url, image, version="v9").status_code == 404
  assert predict_file(url, image, top_k=0).status_code == 422
  assert httpx.get(f"{url}/readyz").status_code == 200  # still serving


def test_api_key_is_required_when_set(exports, tmp_path):
  options = ServeOptions(models=[str(exports["v1"])], log_path=str(tmp_path / "s.db"),
                         api_key="s3cret")
  image = encode(labelled_images(1)[0][0])
  with running_server(options) as (url, _):
    assert predict_file(url, image).status_code == 401
    response = httpx.post(f"{url}/v1/predict", files={"file": ("x.png", image, "image/png")},
                          headers={"X-API-Key": "wrong"})
    assert response.status_code == 401 and "X-API-Key" in response.json()["detail"]
    for headers in ({"X-API-Key": "s3cret"}, {"Authorization": "Bearer s3cret"}):
      response = httpx.post(f"{url}/v1/predict", files={"file": ("x.png", image, "image/png")},
                            headers=headers)
      assert response.status_code == 200
    assert httpx.get(f"{url}/healthz").status_code == 200


def test_serve_command_rejects_bad_models_in_one_line(tmp_path, exports):
  result = run_module("experiments.serve", f"--model={tmp_path}", check=False, timeout=120)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith("error: ")
  assert "export.json does not exist" in result.stderr
  result = run_module("experiments.serve", f"--model={exports['v1']}",
                      f"--model={exports['v2']}", "--traffic=0.9", check=False, timeout=120)
  assert result.returncode == 2 and "one weight per model" in result.stderr


def test_no_5xx_for_schemathesis_generated_requests(server):
  import hypothesis  # pylint: disable=import-outside-toplevel
  import schemathesis  # pylint: disable=import-outside-toplevel
  from schemathesis.checks import not_a_server_error  # pylint: disable=import-outside-toplevel

  url, _ = server
  schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
  failures, operations = [], 0
  for result in schema.get_all_operations():
    operation = result.ok()
    operations += 1

    @hypothesis.settings(max_examples=8, deadline=None, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck), derandomize=True)
    @hypothesis.given(case=operation.as_strategy())
    def check(case):
      response = case.call(base_url=url, timeout=30)
      if response.status_code >= 500:
        failures.append(f"{case.method} {case.path}: {response.status_code} {response.text[:200]}")
      case.validate_response(response, checks=[not_a_server_error])

    check()
  assert operations >= 8 and not failures, failures


def test_web_page_classifies_a_dropped_image_in_chromium(server, tmp_path):
  from playwright.sync_api import sync_playwright  # pylint: disable=import-outside-toplevel

  url, _ = server
  images, labels = labelled_images(2, seed=31)
  path = tmp_path / "shoe.png"
  path.write_bytes(encode(images[1]))
  with sync_playwright() as playwright:
    browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                         args=["--no-sandbox"])
    try:
      page = browser.new_page()
      page.goto(url + "/")
      page.set_input_files("#file", str(path))
      page.wait_for_selector("#results .result", timeout=30_000)
      rows = page.locator("#results .result")
      assert rows.count() == 4  # top-5 of a 4-class model
      assert rows.first.locator(".label").inner_text() == LABELS[labels[1]]
      widths = [rows.nth(i).locator(".bar").evaluate("e => e.getBoundingClientRect().width")
                for i in range(rows.count())]
      assert widths == sorted(widths, reverse=True) and widths[0] > 100
      assert page.locator("#version").get_attribute("data-version") in ("v1", "v2")
      assert "Answered by model version" in page.locator("#version").inner_text()
      # Dropping a file on the drop zone works the same way.
      data = base64.b64encode(encode(images[0])).decode()
      page.evaluate("""async (data) => {
        const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "bag.png", {type: "image/png"}));
        document.getElementById("drop").dispatchEvent(
            new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
      }""", data)
      page.wait_for_function(
          "document.querySelector('#status').textContent === 'bag.png'", timeout=30_000)
      assert rows.first.locator(".label").inner_text() == LABELS[labels[0]]
      # A bad file shows the server's message instead of results.
      bad = tmp_path / "bad.png"
      bad.write_bytes(b"not an image")
      page.set_input_files("#file", str(bad))
      page.wait_for_selector("#error:has-text('cannot decode')", timeout=30_000)
      assert rows.count() == 0
    finally:
      browser.close()


def test_drift_monitor_passes_normal_traffic_and_flags_inverted_images(exports, tmp_path,
                                                                       tiny_model_dir):
  log = tmp_path / "serving.db"
  data = tiny_model_dir.parent / "idx"
  options = ServeOptions(models=[str(exports["v1"])], log_path=str(log), max_wait_ms=2)
  images, _ = labelled_images(120, seed=41)
  payloads = [{"images": [base64.b64encode(encode(image)).decode() for image in chunk]}
              for chunk in np.array_split(np.stack(images), 15)]
  inverted = [{"images": [base64.b64encode(encode(255 - image)).decode() for image in chunk]}
              for chunk in np.array_split(np.stack(images), 15)]
  monitor = ("experiments.monitor", f"--model={exports['v1']}", f"--log={log}",
             f"--reference=idx:{data}", "--split=test", "--last=120")
  with running_server(options) as (url, app):
    with httpx.Client(base_url=url, timeout=30) as client:
      assert all(client.post("/v1/predict", json=p).status_code == 200 for p in payloads)
      app.state.log.flush()
      normal = run_module(*monitor, f"--out={tmp_path}/normal", check=False, timeout=300)
      assert normal.returncode == 0, normal.stdout + normal.stderr
      assert all(client.post("/v1/predict", json=p).status_code == 200 for p in inverted)
      app.state.log.flush()
  shifted = run_module(*monitor, f"--out={tmp_path}/shifted", check=False, timeout=300)
  assert shifted.returncode == 1, shifted.stdout + shifted.stderr
  assert "drift in" in shifted.stdout
  normal_report = json.loads((tmp_path / "normal/report.json").read_text())
  shifted_report = json.loads((tmp_path / "shifted/report.json").read_text())
  assert not normal_report["drift"] and shifted_report["drift"]
  assert normal_report["n_live"] == shifted_report["n_live"] == 120
  assert normal_report["n_reference"] == 128
  assert shifted_report["tests"]["embedding"]["p_value"] < 1e-6
  assert normal_report["tests"]["embedding"]["p_value"] > 0.01
  for report in ("normal", "shifted"):
    assert (tmp_path / report / "drift.png").stat().st_size > 10_000
  print("drift p-values (normal, shifted):",
        {k: (normal_report["tests"][k]["p_value"], shifted_report["tests"][k]["p_value"])
         for k in normal_report["tests"]})


def test_benchmark_serving_drives_a_server_process(exports, tmp_path):
  out = tmp_path / "bench.json"
  run_module("experiments.benchmark_serving", f"--model={exports['v1']}", "--requests=60",
             "--concurrency=8", f"--out={out}", timeout=300)
  report = json.loads(out.read_text())
  assert report["errors"] == 0 and report["requests"] == 60
  assert report["throughput_rps"] > 1 and 0 < report["latency_ms_p50"] <= report["latency_ms_p99"]
  (model,) = report["server"]
  assert model["version"] == "v1" and model["requests"] >= 60


def test_an_int8_export_serves_micro_batches_through_its_batch_1_graph(tiny_model_dir, tmp_path):
  from vision.export import export_workdir, load_exported  # pylint: disable=import-outside-toplevel
  out = tmp_path / "tflite_int8"
  export_workdir(tiny_model_dir, "tflite", out, int8=True, version="int8", max_examples=16,
                 calibration_examples=16, latency_repeats=1)
  assert json.loads((out / "export.json").read_text())["input"]["batch_size"] == 1
  images, _ = labelled_images(12, seed=31)
  options = ServeOptions(models=[str(out)], log_path=str(tmp_path / "serving.db"),
                         max_batch_size=8, max_wait_ms=50)
  with running_server(options) as (url, _):
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
      responses = list(pool.map(lambda image: predict_file(url, encode(image)), images))
    batching = httpx.get(f"{url}/v1/models").json()["models"][0]["batching"]
  assert all(r.status_code == 200 for r in responses)
  assert batching["images"] == 12 and batching["max_batch_size"] > 1  # batches of several
  # Each answer is the batch-1 graph's own answer for that image.
  model = load_exported(out)
  expected = [LABELS[int(np.argmax(model.predict(image[None, ..., None])["logits"][0]))]
              for image in images]
  assert [r.json()["predictions"][0]["top"][0]["label"] for r in responses] == expected
