"""Saliency maps of image files: where the model looks for a class.

    python -m experiments.explain --workdir=models/mobilenet_v2 --method=gradcam \
        --out=explained chelsea.png [--target=tabby]

--method: gradcam or gradcam_pp (CNNs: the last convolutional stage), rollout
(Vision Transformers: attention rollout), integrated_gradients (any model).
For each IMAGE, OUT/<stem>.npy is a float32 map of the image's own height ×
width in [0, 1] (zero where the model's centre crop cut the image away) and
OUT/<stem>.png the photo with the map over it. --target is a class index or
name (default: the predicted class). One JSON line per image is printed; an
unreadable file gets {"file", "error"} and the command exits 1 after the others.
"""

from absl import flags

from experiments import common
from vision.evaluate import saliency
from vision.evaluate.explain import explain_files

_WORKDIR = flags.DEFINE_string("workdir", None, "A model directory (experiments.train output, "
                               "or experiments.import_weights).")
_METHOD = flags.DEFINE_enum("method", "gradcam", list(saliency.METHODS), "The saliency method.")
_TARGET = flags.DEFINE_string("target", None, "Class index or name; default: the predicted one.")
_OUT = flags.DEFINE_string("out", None, "Directory for OUT/<stem>.npy and OUT/<stem>.png.")
_STEPS = flags.DEFINE_integer("steps", saliency.IG_STEPS,
                              "Integrated gradients: points on the path from the black baseline.")
_WHICH = flags.DEFINE_enum("which", "best", ["best", "latest"], "Which checkpoint.")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv: list[str]) -> None:
  paths = common.image_paths(argv)
  results = explain_files(_WORKDIR.value, paths, method=_METHOD.value, out=_OUT.value,
                          target=_TARGET.value, which=_WHICH.value, steps=_STEPS.value)
  common.print_results(results, len(paths))


if __name__ == "__main__":
  common.run(main)
