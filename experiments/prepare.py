"""Prepares and audits a dataset: one command, one report, a dataset training reads.

    python -m experiments.prepare --source=folder:photos --out=data/photos
    python -m experiments.prepare --source=csv:labels.csv --out=data/tags
    python -m experiments.prepare --source=labelstudio:export.json --out=data/ls
    python -m experiments.train --config=configs/fashion_mnist.py \
        --config.data.source=prepared:data/photos --workdir=runs/photos

Writes DIR/{train,val,test}.array_record, DIR/metadata.json, DIR/audit.json and
DIR/audit.html. The source is only read.
"""

import sys

from absl import flags

from experiments import common
from vision.data import audit, prepare

_SOURCE = flags.DEFINE_string(
    "source", None, "folder:PATH, csv:FILE or labelstudio:FILE.")
_OUT = flags.DEFINE_string("out", None, "Output directory (created; never inside the source).")
_MAX_PIXELS = flags.DEFINE_integer(
    "max_pixels", audit.Limits.max_pixels, "Images with more pixels are excluded "
    "(decompression-bomb guard).")
_MIN_SIZE = flags.DEFINE_integer(
    "min_size", audit.Limits.min_size, "Images whose shorter side is below this are excluded.")
_NEAR = flags.DEFINE_integer(
    "near_duplicate_distance", audit.Limits.near_duplicate_distance,
    "Perceptual-hash Hamming distance (of 64 bits) up to which two images are near-duplicate "
    "candidates; -1 turns the search off.")
_NEAR_DIFFERENCE = flags.DEFINE_float(
    "near_duplicate_difference", audit.Limits.near_duplicate_difference,
    "Candidates are near duplicates when their pixel difference (0-1: mean absolute difference "
    "of 32x32 greyscale signatures, aligned) is at most this.")
_VAL = flags.DEFINE_float("val_fraction", 0.1, "Carved from train when the source has no val.")
_TEST = flags.DEFINE_float("test_fraction", 0.1, "Carved from train when the source has no test.")
_SEED = flags.DEFINE_integer("split_seed", 0, "Seed of the carved splits.")
flags.mark_flags_as_required(["source", "out"])


def _progress(done: int, total: int) -> None:
  if done == total or done % 500 == 0:
    print(f"\rinspected {done}/{total} files", end="\n" if done == total else "",
          file=sys.stderr, flush=True)


def main(argv: list[str]) -> None:
  common.reject_extra_arguments(argv)
  for name, value in (("val_fraction", _VAL.value), ("test_fraction", _TEST.value)):
    if not 0 <= value < 1:
      common.fail(f"--{name} must be in [0, 1), got {value}")
  if _MAX_PIXELS.value <= 0 or _MIN_SIZE.value < 1:
    common.fail("--max_pixels and --min_size must be positive")
  if not 0 <= _NEAR_DIFFERENCE.value <= 1:
    common.fail(f"--near_duplicate_difference must be in [0, 1], got {_NEAR_DIFFERENCE.value}")
  options = prepare.PrepareOptions(
      limits=audit.Limits(_MAX_PIXELS.value, _MIN_SIZE.value, _NEAR.value,
                          _NEAR_DIFFERENCE.value),
      val_fraction=_VAL.value, test_fraction=_TEST.value, split_seed=_SEED.value)
  report = prepare.prepare(_SOURCE.value, _OUT.value, options, progress=_progress)
  splits = ", ".join(f"{name} {info['count']}" for name, info in report["splits"].items())
  ratio = report["classes"]["imbalance_ratio"]
  print(f"kept {report['files_kept']} of {report['files_seen']} files ({splits}); "
        f"{len(report['classes']['counts'])} classes, imbalance ratio {ratio:.2f}")
  for kind, count in report["summary"].items():
    print(f"  {kind}: {count}")
  near = report["near_duplicates"]
  if near["candidate_pairs"]:
    print(f"  near duplicates: {near['groups']} group(s), {near['images']} images "
          f"({near['confirmed_pairs']} of {near['candidate_pairs']} candidate pairs confirmed)")
  print(f"prepared:{_OUT.value}  (report: {_OUT.value}/audit.html)")


if __name__ == "__main__":
  common.run(main)
