"""Drift monitor: compares logged traffic with a reference split through the same model.

    python -m experiments.monitor --model=exports/fmnist_onnx --log=serving.db \
        --reference=idx:/usr/share/datasets/fashion-mnist [--split=test] [--last=1000]

Writes OUT/report.json and OUT/drift.png (OUT: --out, default `<log>_drift/`) and
prints the verdict. Exit status: 0 no drift, 1 drift, 2 a usage error. Tests and
thresholds: vision/serve/drift.py and README "Drift monitor".
"""

import json
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from experiments import common  # noqa: E402
from vision.files import write_text_atomically  # noqa: E402
from vision.serve import drift  # noqa: E402
from vision.serve.log import read_predictions  # noqa: E402
from vision.serve.runtime import ExportError, load_served  # noqa: E402

_MODEL = flags.DEFINE_string("model", None, "The experiments.export directory being served.")
_LOG = flags.DEFINE_string("log", "serving.db", "The server's SQLite prediction log.")
_REFERENCE = flags.DEFINE_string("reference", None, "Reference data source, e.g. "
                                 "idx:/usr/share/datasets/fashion-mnist or folder:DIR.")
_SPLIT = flags.DEFINE_string("split", "test", "Split of --reference to compare with "
                             "(train, val or test).")
_LIMIT = flags.DEFINE_integer("reference_limit", 2000, "Reference images (seeded sample; 0: all).")
_VERSION = flags.DEFINE_string("version", None, "Logged version to check (default: --model's).")
_LAST = flags.DEFINE_integer("last", None, "Only the latest N logged predictions.")
_SINCE = flags.DEFINE_float("since", None, "Only predictions logged at or after this Unix time.")
_ALPHA = flags.DEFINE_float("alpha", 0.01, "Significance level, Bonferroni-split over the tests.")
_THRESHOLD = flags.DEFINE_float("threshold", 0.1, "Smallest effect that counts as drift "
                                "(KS statistic; Cramér's V for classes).")
_OUT = flags.DEFINE_string("out", None, "Report directory (default: <log without .db>_drift).")
flags.mark_flags_as_required(["model", "reference"])


def main(argv: list[str]) -> None:
  common.reject_extra_arguments(argv)
  try:
    model = load_served(_MODEL.value)
  except ExportError as error:
    common.fail(str(error))
  version = _VERSION.value or model.spec.version
  live = read_predictions(_LOG.value, version=version, since=_SINCE.value, limit=_LAST.value)
  if len(live.ids) < 2:
    common.fail(f"{_LOG.value} has {len(live.ids)} predictions of version {version!r}; "
                "need at least 2 (serve some traffic, or pass --version)")
  reference = drift.reference_outputs(model, _REFERENCE.value, _SPLIT.value,
                                      limit=_LIMIT.value or None)
  try:
    report = drift.compare(reference, drift.Outputs(live.confidence, live.embedding, live.top1),
                           num_classes=len(model.spec.class_names), alpha=_ALPHA.value,
                           threshold=_THRESHOLD.value)
  except ValueError as error:
    common.fail(str(error))
  report.update(model=str(_MODEL.value), version=version, log=str(_LOG.value),
                reference=_REFERENCE.value, split=_SPLIT.value)
  out = pathlib.Path(_OUT.value or f"{os.path.splitext(_LOG.value)[0]}_drift")
  out.mkdir(parents=True, exist_ok=True)
  write_text_atomically(out / "report.json", json.dumps(report, indent=2))
  drift.plot(reference, drift.Outputs(live.confidence, live.embedding, live.top1), report,
             out / "drift.png")
  for name, test in report["tests"].items():
    print(f"{name:16s} statistic {test['statistic']:.3f}  p {test['p_value']:.3g}"
          f"{'  DRIFT' if test['drift'] else ''}")
  verdict = f"drift in {', '.join(report['drifted'])}" if report["drift"] else "no drift"
  print(f"{verdict}: {report['n_live']} served vs {report['n_reference']} reference images "
        f"(alpha {_ALPHA.value}, threshold {_THRESHOLD.value}); report: {out / 'report.json'}")
  if report["drift"]:
    sys.exit(1)


if __name__ == "__main__":
  common.run(main)
