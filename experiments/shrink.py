"""Rebuilds a channel-pruned model directory with the pruned channels removed.

    python -m experiments.shrink --workdir=runs/compress/channel50 \
        --out=runs/compress/channel50_narrow

WORKDIR was trained with `prune.granularity=channel`; OUT becomes a model
directory of the same model with narrower conv stages (model card `widths`),
equal logits, fewer FLOPs, and `shrink_report.json` (widths, parameters and
FLOPs before and after, the largest logit difference on random inputs).
Evaluate, export and serve OUT like any model directory.
"""

import json

from absl import flags

from experiments import common
from vision.compress import channels

_WORKDIR = flags.DEFINE_string("workdir", None, "A channel-pruned model directory.")
_OUT = flags.DEFINE_string("out", None, "The new, narrower model directory (new or empty).")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv: list[str]) -> None:
  common.reject_extra_arguments(argv)
  print(json.dumps(channels.shrink_model_dir(_WORKDIR.value, _OUT.value), indent=2))


if __name__ == "__main__":
  common.run(main)
