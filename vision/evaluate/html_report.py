"""One self-contained page per evaluated split: `eval/<split>/report.html`.

    write_html(task, report, "runs/fashion_mnist/eval/test", title="fashion_mnist: test split")

The page opens with accuracy, macro F1 and the expected calibration error
(before and after temperature scaling), then the per-class table, the
confusion matrix, the reliability diagram, the most-confused pairs and the
top-losses gallery, each where the task's report has it (a multi-label report
has per-class precision, recall, F1, AP and thresholds; a multi-task report has
one such section per head). Images are embedded as base64 PNG, so the file can
be mailed or attached to a ticket; nothing is fetched when it opens.
"""

from __future__ import annotations

import base64
import html
import os
import pathlib

from vision.evaluate import calibration, interpret
from vision.evaluate import report as report_lib
from vision.files import write_text_atomically

HTML_FILENAME = "report.html"

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
.headline { display: flex; gap: 1em; flex-wrap: wrap; margin: 1em 0; }
.metric { background: #f4f6f8; border-radius: 8px; padding: .6em 1.1em; min-width: 9em; }
.metric .value { font-size: 1.6em; font-weight: 600; }
.metric .name { color: #555; font-size: .9em; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { padding: .25em .7em; border-bottom: 1px solid #eee; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
.note { color: #666; font-size: .9em; }
"""


def _png(path: pathlib.Path) -> str:
  """An <img> with the PNG embedded, or '' when the file does not exist."""
  if not path.exists():
    return ""
  data = base64.b64encode(path.read_bytes()).decode("ascii")
  return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _number(value, digits: int = 4) -> str:
  if value is None:
    return "–"
  if isinstance(value, float):
    return f"{value:.{digits}f}"
  return html.escape(str(value))


def _metric(name: str, value: str) -> str:
  return (f'<div class="metric"><div class="value">{value}</div>'
          f'<div class="name">{html.escape(name)}</div></div>')


def _table(columns: list[str], rows: list[list]) -> str:
  head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
  body = "".join("<tr>" + "".join(f"<td>{_number(v)}</td>" for v in row) + "</tr>" for row in rows)
  return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _headline(report: dict) -> str:
  metrics = [_metric("accuracy" if not report.get("multi_label") else "exact-match accuracy",
                     f"{report['accuracy']:.2%}")]
  if "macro_avg" in report:
    metrics.append(_metric("macro F1", f"{report['macro_avg']['f1']:.4f}"))
  calibration_report = report.get("calibration")
  if calibration_report:
    metrics.append(_metric("ECE (raw)", f"{calibration_report['ece']:.2%}"))
    metrics.append(_metric(f"ECE at T = {calibration_report['temperature']:.3g}",
                           f"{calibration_report['ece_calibrated']:.2%}"))
  if report.get("mAP") is not None:
    metrics.append(_metric("mAP", f"{report['mAP']:.4f}"))
  if "top5_accuracy" in report:
    metrics.append(_metric("top-5 accuracy", f"{report['top5_accuracy']:.2%}"))
  return f'<div class="headline">{"".join(metrics)}</div>'


def _per_class(report: dict, class_names) -> str:
  per_class = report.get("per_class") or {}
  if not per_class:
    return ""
  fields = list(next(iter(per_class.values())))
  accuracy = report.get("per_class_accuracy")
  columns = ["class"] + fields + (["accuracy"] if accuracy else [])
  rows = [[name] + [per_class[name][f] for f in fields] + ([accuracy[name]] if accuracy else [])
          for name in class_names if name in per_class]
  return "<h3>Per class</h3>" + _table(columns, rows)


def _section(report: dict, class_names, directory: pathlib.Path) -> str:
  parts = [_headline(report), _per_class(report, class_names)]
  matrix = _png(directory / report_lib.CONFUSION_MATRIX_FILENAME)
  if matrix:
    parts.append("<h3>Confusion matrix</h3>" + matrix)
  fit = report.get("calibration")
  if fit:
    parts.append(f"<h3>Reliability diagram</h3><p class=note>{html.escape(fit['binning'])}; "
                 f"expected calibration error {fit['ece']:.4f} raw, {fit['ece_calibrated']:.4f} "
                 f"at temperature {fit['temperature']:.4g}.</p>"
                 + _png(directory / calibration.RELIABILITY_FILENAME))
  if "most_confused" in report:
    parts.append("<h3>Most confused</h3>" + (_table(
        ["true", "predicted", "count"],
        [[p["true"], p["predicted"], p["count"]] for p in report["most_confused"]])
        if report["most_confused"] else "<p>No class was mistaken for another.</p>"))
  if report.get("top_losses"):
    parts.append("<h3>Top losses</h3>" + _png(directory / interpret.GALLERY_FILENAME) + _table(
        ["index", "file", "true", "predicted", "probability", "loss"],
        [[e["index"], e.get("file", ""), e["true"], e["predicted"], e["probability"], e["loss"]]
         for e in report["top_losses"]]))
  return "\n".join(p for p in parts if p)


def render(task, report: dict, directory: str | os.PathLike, title: str) -> str:
  """The page as a string; the PNGs are read from `directory` (a head's from DIR/HEAD/)."""
  directory = pathlib.Path(directory)
  body = [f"<h1>{html.escape(title)}</h1>"]
  sections = task.sections(report)
  if len(sections) > 1:
    body.append(f"<p>Mean accuracy over {len(sections)} heads: {report['accuracy']:.2%}</p>")
  for name, section, _, class_names in sections:
    if name:
      body.append(f"<h2>Head {html.escape(name)}</h2>")
    body.append(_section(section, class_names, directory / name if name else directory))
  tta = html.escape(str(report.get("tta", "none")))
  body.append(f"<p class=note>Test-time augmentation: {tta}. Written by vision.evaluate.</p>")
  return ("<!doctype html><html lang=en><head><meta charset=utf-8>"
          f"<title>{html.escape(title)}</title><link rel=icon href=\"data:,\">"
          f"<style>{_STYLE}</style></head><body>"
          + "\n".join(body) + "</body></html>\n")


def write_html(task, report: dict, directory: str | os.PathLike, title: str) -> pathlib.Path:
  """DIRECTORY/report.html (after the task's report and plots are in DIRECTORY)."""
  path = pathlib.Path(directory) / HTML_FILENAME
  write_text_atomically(path, render(task, report, directory, title))
  return path
