"""Prints the top-5 classes of image files, one JSON line per image.

    python -m experiments.predict --workdir=runs/fashion_mnist shoe.png bag.jpg
    python -m experiments.predict --workdir=runs/fashion_mnist --tta=flip --raw_probabilities shoe.png

Probabilities are temperature-scaled by the model card's temperature (fitted on
validation at the end of training); --raw_probabilities prints them without.
--tta averages them over flipped (flip) or flipped and shifted (flip_crops) views.

Each line is {"file": ..., "top": [{"label", "index", "prob"}, ...]} (a
multi-label model adds "labels"; a multi-task model answers per head:
{"file": ..., "tasks": {HEAD: {"top": [...]}}}); an unreadable file gets
{"file": ..., "error": ...} and the command exits with status 1 after
predicting the others.
"""

from absl import flags

from experiments import common
from vision.evaluate import tta as tta_lib
from vision.evaluate.predict import predict_files

_WORKDIR = flags.DEFINE_string("workdir", None, "A model directory (experiments.train output).")
_TOP = flags.DEFINE_integer("top", 5, "How many classes to print per image.")
_TTA = flags.DEFINE_enum("tta", "none", list(tta_lib.TTA_MODES),
                         "Test-time augmentation: none, flip (2 views) or flip_crops (10 views).")
_RAW = flags.DEFINE_bool("raw_probabilities", False,
                         "Print the probabilities without the model card's temperature scaling.")
flags.mark_flag_as_required("workdir")


def main(argv: list[str]) -> None:
  paths = common.image_paths(argv)
  results = predict_files(_WORKDIR.value, paths, k=_TOP.value, tta=_TTA.value,
                          raw_probabilities=_RAW.value)
  common.print_results(results, len(paths))


if __name__ == "__main__":
  common.run(main)
