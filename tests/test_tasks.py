"""Tasks as the seam: config of user-named heads, label sources, the multi-task objective, and a
multi-task model through training, resume, evaluate, predict, export (ONNX, TFLite) and serving."""

from __future__ import annotations

import io
import json
import math
import pathlib
import shutil
import types

from fastapi.testclient import TestClient
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from conftest import class_pattern, tiny_config
import wandb_offline
from test_train import read_metrics, saved_arrays
from vision import config as config_lib
from vision import tasks
from vision.checkpoint import CHECKPOINTS
from vision.config import ConfigError
from vision.data import prepare
from vision.data.sources import Dataset
from vision.evaluate.evaluate import evaluate_workdir
from vision.evaluate.predict import predict_files
from vision.tasks.classification import Classification
from vision.tasks.labels import LabelSource, label_source
from vision.tasks.multi_label import MultiLabel
from vision.tasks.multi_task import MultiTask
from vision.train import loop

CLASSES = ("a", "b", "c", "d")  # the bright quadrant: top-left, top-right, bottom-left, bottom-right
SIDE = {"a": "top", "b": "top", "c": "bottom", "d": "bottom"}
LEFT_RIGHT = {"a": "left", "b": "right", "c": "left", "d": "right"}


# ------------------------------------------------------------------ config of heads

def _multi_task_config(**heads) -> config_lib.ml_collections.ConfigDict:
  config = config_lib.defaults()
  config.task.name = "multi_task"
  for name, keys in heads.items():
    config_lib.add_head(config, name, **keys)
  return config


def test_head_names_are_the_users_and_their_keys_are_checked():
  config = config_lib.validate(_multi_task_config(cls={}, group={"source": "map:g.json"}),
                               check_environment=False)
  assert list(config.task.heads) == ["cls", "group"]
  assert config.task.heads.group.loss_weight == 1.0 and config.task.heads.cls.source == "label"
  config_lib.check_override_keys(["task.heads.garment.loss_weight", "task.weighting"])

  raw = config_lib.defaults()
  raw.task.name = "multi_task"
  raw.task.heads = {"garment": {"sorce": "label"}}
  with pytest.raises(ConfigError, match=r"'task.heads.garment.sorce' is unknown; did you mean "
                                        r"'task.heads.garment.source'"):
    config_lib.validate(raw, check_environment=False)
  with pytest.raises(ConfigError, match="'task.heads.garment.loss_wieght' is unknown"):
    config_lib.check_override_keys(["task.heads.garment.loss_wieght"])
  with pytest.raises(ConfigError, match="a head name is a letter"):
    config_lib.check_override_keys(["task.heads.2nd.type"])
  with pytest.raises(ConfigError, match="set task.name='multi_task'"):
    config_lib.validate(_classification_with_heads(), check_environment=False)
  with pytest.raises(ConfigError, match="'task.heads' is empty"):
    config_lib.validate(_multi_task_config(), check_environment=False)
  with pytest.raises(ConfigError, match="'task.heads.cls.source' is 'colum:x'"):
    config_lib.validate(_multi_task_config(cls={"source": "colum:x"}), check_environment=False)
  with pytest.raises(ConfigError, match="'task.weighting' is 'learned'"):
    config = _multi_task_config(cls={})
    config.task.weighting = "learned"
    config_lib.validate(config, check_environment=False)


def _classification_with_heads():
  config = _multi_task_config(cls={})
  config.task.name = "classification"
  return config


# ------------------------------------------------------------------ label sources

def _dataset(label_columns=None) -> Dataset:
  return Dataset({}, CLASSES, label_columns=label_columns or {})


def test_a_mapping_file_derives_a_head_and_its_mistakes_are_one_line(tmp_path):
  path = tmp_path / "lr.json"
  path.write_text(json.dumps(LEFT_RIGHT))
  source = label_source(f"map:{path}", _dataset(), key="task.heads.lr.source")
  assert source.class_names == ("left", "right")
  labels = np.array([0, 1, 2, 3, 3])
  np.testing.assert_array_equal(source.labels({"label": labels}), [0, 1, 0, 1, 1])
  traced = jax.jit(lambda b: source.labels(b))({"label": jnp.asarray(labels)})
  np.testing.assert_array_equal(np.asarray(traced), [0, 1, 0, 1, 1])

  path.write_text(json.dumps({"a": "left", "b": "right", "c": "left"}))
  with pytest.raises(ConfigError, match=r"does not map the classes \['d'\]"):
    label_source(f"map:{path}", _dataset(), key="k")
  path.write_text(json.dumps({**LEFT_RIGHT, "e ": "left"}))
  with pytest.raises(ConfigError, match="maps 'e ', which is not a class of the data"):
    label_source(f"map:{path}", _dataset(), key="k")
  with pytest.raises(ConfigError, match="mapping file .* does not exist"):
    label_source(f"map:{tmp_path / 'nope.json'}", _dataset(), key="k")
  with pytest.raises(ConfigError, match="no label column 'side'"):
    label_source("column:side", _dataset(), key="task.heads.side.source")


# ------------------------------------------------------------------ the objective

def test_the_objective_is_the_weighted_sum_or_kendalls_uncertainty_weighting():
  logits = jax.random.normal(jax.random.key(0), (6, 6))
  batch = {"label": jnp.array([0, 1, 2, 3, 0, 1])}
  train = config_lib.defaults().train
  records = types.SimpleNamespace(labels=np.array([0, 1, 2, 3]))

  def ce(x, labels):
    return float(-jnp.mean(jax.nn.log_softmax(x)[jnp.arange(len(labels)), labels]))
  cls_loss, half_loss = ce(logits[:, :4], batch["label"]), ce(logits[:, 4:], batch["label"] % 2)

  # 'half' reads its labels through a mapping: the dataset's class mod 2.
  half = Classification(("x", "y"), LabelSource("map:m", "label", (0, 1, 0, 1), ("x", "y")))
  task = MultiTask.from_heads([("cls", Classification(CLASSES), 1.0), ("half", half, 0.5)])
  total, metrics = task.loss(train, records)(logits, batch, None)
  assert float(total) == pytest.approx(cls_loss + 0.5 * half_loss, rel=1e-5)
  assert float(metrics["train/loss/half"]) == pytest.approx(half_loss, rel=1e-5)
  assert set(task.train_metrics(logits, batch)) == {"train/accuracy/cls", "train/accuracy/half"}

  uncertain = MultiTask.from_heads([("cls", Classification(CLASSES), 1.0), ("half", half, 0.5)],
                                   "uncertainty")
  assert uncertain.uncertainty_weights == 2
  s = jnp.array([0.3, -0.2])
  model = types.SimpleNamespace(head=types.SimpleNamespace(log_variance=s))
  total, metrics = uncertain.loss(train, records)(logits, batch, model)
  expected = (math.exp(-0.3) * cls_loss + 0.15) + 0.5 * (math.exp(0.2) * half_loss - 0.1)
  assert float(total) == pytest.approx(expected, rel=1e-5)
  assert float(metrics["train/task_weight/half"]) == pytest.approx(math.exp(0.2), rel=1e-6)


def test_a_task_round_trips_through_json_and_answers_per_head():
  task = MultiTask.from_heads([("cls", Classification(CLASSES), 1.0),
                               ("tags", MultiLabel(("p", "q")), 2.0)], "uncertainty")
  again = tasks.from_json(json.loads(json.dumps(task.to_json())))
  assert again == task and again.num_outputs == 6 and again.output_names == (
      "logits_cls", "logits_tags", "probabilities_cls", "probabilities_tags")
  logits = np.array([[4.0, 0.0, 0.0, 0.0, 3.0, -3.0]], np.float32)
  probs = task.probabilities(logits)
  assert probs[0, :4].sum() == pytest.approx(1.0) and probs[0, 4] > 0.9 > 0.1 > probs[0, 5]
  answer = task.predictions(probs[0], k=2)
  assert answer["tasks"]["cls"]["top"][0]["label"] == "a" and len(answer["tasks"]["cls"]["top"]) == 2
  assert answer["tasks"]["tags"]["labels"] == ["p"]
  outputs = task.outputs(logits)
  np.testing.assert_array_equal(task.join(outputs), logits)
  fitted = task.with_fitted_state({"tags": {"p": 0.99, "q": 0.5}})
  assert fitted.predictions(probs[0], 2)["tasks"]["tags"]["labels"] == []
  assert fitted.fitted_state() == {"tags": {"p": 0.99, "q": 0.5}}


# ------------------------------------------------------------------ end to end

def write_csv_dataset(root: pathlib.Path, count: int = 160) -> pathlib.Path:
  """Quadrant images; CSV columns path, label (a..d) and side (top/bottom): two label columns."""
  rng = np.random.default_rng(0)
  (root / "img").mkdir(parents=True)
  rows = ["path,label,side"]
  for i in range(count):
    name = CLASSES[i % 4]
    Image.fromarray(class_pattern(i % 4, rng)).save(root / "img" / f"{i}.png")
    rows.append(f"img/{i}.png,{name},{SIDE[name]}")
  (root / "labels.csv").write_text("\n".join(rows) + "\n")
  (root / "lr.json").write_text(json.dumps(LEFT_RIGHT))
  return root


HEADS = ("cls", "side", "lr")


@pytest.fixture(scope="module")
def multitask_run(tmp_path_factory):
  """A prepared CSV (two label columns) and a 3-head run: label, column:side, map:lr.json."""
  root = tmp_path_factory.mktemp("multitask")
  data = write_csv_dataset(root / "data")
  prepare.prepare(f"csv:{data / 'labels.csv'}", str(root / "prepared"),
                  prepare.PrepareOptions(val_fraction=0.2, test_fraction=0.2))
  config = tiny_config(f"prepared:{root / 'prepared'}", steps=12)
  config.train.checkpoint_every_steps = 4
  config.optim.name, config.optim.learning_rate = "adamw", 0.01
  config.task.name, config.task.weighting = "multi_task", "uncertainty"
  config_lib.add_head(config, "cls")
  config_lib.add_head(config, "side", source="column:side")
  config_lib.add_head(config, "lr", source=f"map:{data / 'lr.json'}", loss_weight=0.5)
  workdir = root / "run"
  report = loop.train(config, workdir)
  return types.SimpleNamespace(config=config, workdir=workdir, report=report, root=root)


@pytest.mark.slow
def test_multi_task_run_reports_and_logs_every_head(multitask_run):
  workdir, report = multitask_run.workdir, multitask_run.report
  assert set(report["tasks"]) == set(HEADS)
  assert report["tasks"]["side"]["class_names"] == ["bottom", "top"]
  assert report["tasks"]["lr"]["class_names"] == ["left", "right"]
  assert report["accuracy"] == pytest.approx(np.mean([r["accuracy"] for r in report["tasks"].values()]))
  assert report["accuracy"] > 0.6, report["accuracy"]
  on_disk = json.loads((workdir / "eval/test/report.json").read_text())
  assert on_disk["tasks"]["cls"]["confusion_matrix"] == report["tasks"]["cls"]["confusion_matrix"]
  assert (workdir / "eval/test/side/confusion_matrix.png").stat().st_size > 1000
  card = json.loads((workdir / "model_card.json").read_text())
  assert card["best_metric"] == "val/accuracy/mean" and card["num_classes"] == 4 + 2 + 2
  assert card["model_options"]["uncertainty_weights"] == 3
  # Each single-label head reports through its task: its own temperature, analysis and gallery.
  for head in HEADS:
    fit = report["tasks"][head]["calibration"]
    assert fit["temperature"] == card["task"]["heads"][head]["temperature"] > 0
    assert report["tasks"][head]["tta"] == "none" and report["tasks"][head]["top_losses"]
    assert (workdir / f"eval/test/{head}/top_losses.png").stat().st_size > 1000
  page = (workdir / "eval/test/report.html").read_text()
  assert all(f"Head {head}" in page for head in HEADS)

  metrics = read_metrics(workdir)
  keys = set().union(*metrics)
  for head in HEADS:
    assert {f"train/loss/{head}", f"train/accuracy/{head}", f"train/task_weight/{head}",
            f"val/accuracy/{head}", f"val/macro_f1/{head}", f"test/accuracy/{head}"} <= keys
  assert {"train/loss", "val/accuracy/mean", "test/accuracy/mean"} <= keys
  assert "val/accuracy" not in keys  # every head's metric carries its name
  logged = {row["_step"]: row for row in wandb_offline.read_history(
      wandb_offline.wait_for_run_file(workdir))}
  at_6 = next(m for m in metrics if m["step"] == 6)
  assert logged[6]["val/accuracy/side"] == pytest.approx(at_6["val/accuracy/side"])
  assert logged[6]["train/loss/lr"] == pytest.approx(at_6["train/loss/lr"])
  # The learned weights moved from exp(0) = 1.
  assert at_6["train/task_weight/cls"] != pytest.approx(1.0, abs=1e-4)


@pytest.mark.slow
def test_multi_task_evaluates_predicts_and_resumes_exactly(multitask_run, tmp_path):
  workdir = multitask_run.workdir
  again = evaluate_workdir(workdir, "test")
  assert again["tasks"]["lr"]["accuracy"] == multitask_run.report["tasks"]["lr"]["accuracy"]
  assert "--- head 'side' ---" in tasks.load(workdir).summary(again)

  image = tmp_path / "b.png"
  Image.fromarray(class_pattern(1, np.random.default_rng(9))).save(image)
  (line,) = predict_files(workdir, [str(image)], k=2)
  assert set(line["tasks"]) == set(HEADS) and len(line["tasks"]["cls"]["top"]) == 2
  assert line["tasks"]["cls"]["top"][0]["label"] == "b"
  assert {t["label"] for t in line["tasks"]["side"]["top"]} == {"top", "bottom"}

  # Resume: drop the last checkpoint (step 12), re-run, and land on the same parameters.
  resumed = tmp_path / "resumed"
  shutil.copytree(workdir, resumed)
  shutil.rmtree(resumed / CHECKPOINTS / "12")
  loop.train(multitask_run.config, resumed)
  expected, got = saved_arrays(workdir, 12), saved_arrays(resumed, 12)
  assert expected.keys() == got.keys() and "model/head/log_variance/" in expected
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


@pytest.mark.slow
def test_multi_task_exports_one_output_per_head_and_serves_per_head(multitask_run, tmp_path):
  from vision.export import export_workdir, load_exported  # pylint: disable=import-outside-toplevel
  from vision.serve.app import ServeOptions, create_app  # pylint: disable=import-outside-toplevel
  workdir = multitask_run.workdir
  outputs = ["logits_cls", "logits_lr", "logits_side", "probabilities_cls", "probabilities_lr",
             "probabilities_side", "embedding"]  # heads sorted by name
  rng = np.random.default_rng(3)
  images = np.stack([np.repeat(class_pattern(i % 4, rng)[..., None], 3, -1) for i in range(5)])
  for fmt in ("onnx", "tflite"):
    report = export_workdir(workdir, fmt, tmp_path / fmt, max_examples=16, latency_repeats=1)
    info = json.loads((tmp_path / fmt / "export.json").read_text())
    assert info["outputs"] == outputs and info["task"]["name"] == "multi_task"
    assert set(report["heads"]) == set(outputs[:6]) and report["passed"]
    for head in report["heads"].values():
      assert head["top1_agreement"] >= 0.999 and head["max_abs_logit_diff"] < 1e-3
    produced = load_exported(tmp_path / fmt).predict(images)
    assert [produced[name].shape for name in outputs[:3]] == [(5, 4), (5, 2), (5, 2)]
    assert report["accuracy_exported"] == report["accuracy_jax"]

  options = ServeOptions(models=[str(tmp_path / "onnx")], log_path=str(tmp_path / "serving.db"))
  buffer = io.BytesIO()
  Image.fromarray(class_pattern(3, rng)).save(buffer, format="PNG")
  with TestClient(create_app(options)) as client:
    answer = client.post("/v1/predict", files={"file": ("d.png", buffer.getvalue(), "image/png")},
                         params={"top_k": 1}).json()
    (prediction,) = answer["predictions"]
    assert set(prediction["tasks"]) == set(HEADS)
    assert prediction["tasks"]["cls"]["top"][0]["label"] == "d"
    assert prediction["tasks"]["side"]["top"][0]["label"] == "bottom"
    feedback = client.post("/v1/feedback", json={"id": prediction["id"], "label": "d"}).json()
    assert feedback["correct"] is True
    assert client.get("/v1/models").json()["models"][0]["task"]["name"] == "multi_task"
