"""The evaluation a person reads: report.json's analysis, report.html, W&B, TTA and predict."""

from __future__ import annotations

import json
import shutil

import numpy as np
from PIL import Image
import pytest

import quadrant_data
import wandb_offline
from vision import tasks
from vision.evaluate.evaluate import evaluate_workdir
from vision.evaluate.predict import predict_files


@pytest.mark.slow
def test_end_of_training_report_has_calibration_and_error_analysis(quadrant_run):
  report = json.loads((quadrant_run / "eval/test/report.json").read_text())
  card = json.loads((quadrant_run / "model_card.json").read_text())
  fit = report["calibration"]
  assert {"ece", "temperature", "ece_calibrated", "bins"} <= set(fit)
  assert fit["temperature"] == card["task"]["temperature"] != 1.0  # fitted on validation
  assert 0 <= fit["ece_calibrated"] <= 1 and 0 <= fit["ece"] <= 1
  assert sum(fit["bins"]["raw"]["count"]) == report["num_examples"] == 256
  assert report["tta"] == "none"
  assert set(report["per_class_accuracy"]) == set(quadrant_data.CLASS_NAMES)
  assert isinstance(report["most_confused"], list)
  losses = report["top_losses"]
  assert len(losses) == 16 and losses == sorted(losses, key=lambda e: -e["loss"])
  assert {"index", "true", "predicted", "probability", "loss"} <= set(losses[0])
  for name in ("confusion_matrix.png", "reliability.png", "top_losses.png"):
    assert (quadrant_run / "eval/test" / name).stat().st_size > 5_000, name
  page = quadrant_run / "eval/test/report.html"
  assert page.stat().st_size < 5_000_000


@pytest.mark.slow
def test_report_html_renders_every_image_in_chromium_without_console_errors(quadrant_run):
  from playwright.sync_api import sync_playwright  # pylint: disable=import-outside-toplevel

  errors = []
  with sync_playwright() as playwright:
    browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                         args=["--no-sandbox"])
    try:
      page = browser.new_page()
      page.on("console", lambda message: errors.append(message.text)
              if message.type == "error" else None)
      page.on("pageerror", lambda error: errors.append(str(error)))
      page.on("requestfailed", lambda request: errors.append(f"failed: {request.url}"))
      page.goto((quadrant_run / "eval/test/report.html").as_uri(), wait_until="load")
      images = page.locator("img")
      assert images.count() == 3  # confusion matrix, reliability diagram, top-losses gallery
      for i in range(images.count()):
        assert images.nth(i).evaluate("e => e.complete && e.naturalWidth > 100"), i
      headline = page.locator(".headline").first.inner_text()
      for metric in ("accuracy", "macro F1", "ECE (raw)", "ECE at T ="):
        assert metric in headline
      # The page opens with the headline numbers, then the per-class table.
      order = page.evaluate("[...document.querySelectorAll('.headline, h3')].map(e => "
                            "e.className || e.textContent)")
      assert order == ["headline", "Per class", "Confusion matrix", "Reliability diagram",
                       "Most confused", "Top losses"]
      assert page.locator("table").first.locator("tbody tr").count() == 4
    finally:
      browser.close()
  assert not errors, errors


@pytest.mark.slow
def test_the_report_lands_in_the_runs_wandb_run_as_tables_and_images(quadrant_run):
  report = json.loads((quadrant_run / "eval/test/report.json").read_text())
  history = wandb_offline.read_history(wandb_offline.wait_for_run_file(quadrant_run))
  logged = {key: value for row in history for key, value in row.items()}
  for key in ("test/per_class", "test/most_confused", "test/top_losses"):
    assert logged[key]["_type"] == "table-file", key
  assert logged["test/per_class"]["nrows"] == 4
  # A model without confusions still logs the (empty) table: the key is there in every run.
  assert logged["test/most_confused"]["nrows"] == len(report["most_confused"])
  assert logged["test/top_losses"]["nrows"] == len(report["top_losses"]) == 16
  for key in ("test/confusion_matrix", "test/reliability", "test/top_losses_gallery"):
    assert logged[key]["_type"] == "image-file", key
  summary = wandb_offline.read_summary(wandb_offline.wait_for_run_file(quadrant_run))
  assert summary["test/ece_calibrated"] == pytest.approx(report["calibration"]["ece_calibrated"])


@pytest.mark.slow
def test_evaluate_fits_the_temperature_and_averages_tta_views(quadrant_run, tmp_path):
  """What `experiments.evaluate --tta=flip_crops --fit_temperature` runs, in-process."""
  workdir = tmp_path / "run"
  shutil.copytree(quadrant_run, workdir, ignore=shutil.ignore_patterns("wandb*"))
  card_path = workdir / "model_card.json"
  card = json.loads(card_path.read_text())
  fitted = card["task"]["temperature"]
  card["task"]["temperature"] = 1.0
  card_path.write_text(json.dumps(card))
  report = evaluate_workdir(workdir, "test", tta="flip_crops", fit_temperature=True)
  summary = tasks.load(workdir).summary(report)
  assert "ECE:" in summary and "TTA:        flip_crops" in summary
  written = json.loads((workdir / "eval/test/report.json").read_text())
  assert report["tta"] == written["tta"] == "flip_crops" and report["accuracy"] > 0.9
  temperature = json.loads(card_path.read_text())["task"]["temperature"]
  assert temperature == pytest.approx(fitted, rel=1e-4) == report["calibration"]["temperature"]
  assert (workdir / "eval/test/report.html").exists()

  # predict: the card's temperature unless --raw_probabilities; TTA keeps the answer.
  images, labels, _ = quadrant_data.quadrant_images(4, seed=21)
  paths = []
  for i, image in enumerate(images):
    Image.fromarray(image).save(tmp_path / f"{i}.png")
    paths.append(str(tmp_path / f"{i}.png"))
  calibrated = list(predict_files(workdir, paths, k=4))
  raw = list(predict_files(workdir, paths, k=4, raw_probabilities=True))
  flipped = list(predict_files(workdir, paths, k=4, tta="flip"))
  for c, r, f, label in zip(calibrated, raw, flipped, labels):
    assert c["top"][0]["index"] == r["top"][0]["index"] == label
    assert abs(sum(t["prob"] for t in f["top"]) - 1) < 1e-4
    raw_probs = {t["index"]: max(t["prob"], 1e-30) for t in r["top"]}
    scaled = {i: np.exp(np.log(p) / temperature) for i, p in raw_probs.items()}
    for t in c["top"]:
      assert t["prob"] == pytest.approx(scaled[t["index"]] / sum(scaled.values()), abs=1e-3)
