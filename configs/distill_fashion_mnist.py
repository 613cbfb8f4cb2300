r"""Distils the quickstart CNN into a 6x smaller student that has 10,000 labelled images.

Setting: the teacher is the quickstart's model (configs/fashion_mnist.py: 164k
parameters, trained on all 54,000 training images). The student is two conv
stages (8, 16) with a hidden layer of 32: 26,722 parameters. It trains on a
fixed random 10,000 of the training images, for 40 epochs (3,125 steps of 128),
with SGD and a cosine schedule. Validation uses the full 6,000-image split; the
test, the 10,000-image test split. Distilled, the student minimises T²·KL to the
teacher's softened probabilities (T=4, no label term). The teacher runs inside
the train step, on the same flipped batch. The baseline (`distill.variant=alone`)
is the same run trained on the labels. It keeps the teacher for measurement only:
`test/agreement`. The teacher's own accuracy is logged as `test/teacher_accuracy`.

Commands (the teacher first: the README's quickstart command):

    python -m experiments.train --config=configs/fashion_mnist.py --workdir=runs/fashion_mnist
    # The comparison: {alone, distilled} x seed {0, 1, 2} at one budget; one W&B group.
    python -m experiments.sweep \
        --config=configs/distill_fashion_mnist.py:compare,teacher=runs/fashion_mnist \
        --workdir=runs/distill_compare --parallel=2
    # One student (`alone` for the baseline); `teacher=A+B` is an ensemble teacher.
    python -m experiments.train \
        --config=configs/distill_fashion_mnist.py:teacher=runs/fashion_mnist \
        --workdir=runs/distill_student
    # How T, the label weight and the baseline's recipe were chosen (on val/accuracy):
    python -m experiments.sweep --config=configs/distill_fashion_mnist.py:search=alone,teacher=runs/fashion_mnist \
        --workdir=runs/distill_search_alone --parallel=2
    python -m experiments.sweep --config=configs/distill_fashion_mnist.py:search=distilled,teacher=runs/fashion_mnist \
        --workdir=runs/distill_search_distilled --parallel=2
    # Size and speed of teacher and student (exported to ONNX, timed in turns):
    python -m experiments.benchmark_export --variant=teacher=runs/fashion_mnist \
        --variant=student=runs/distill_compare/trial-3

Arguments: `teacher=DIR` (a model directory; `DIR1+DIR2+...` is an ensemble
teacher), `alone` (the baseline), `temperature=T` (default 4), `compare` and
`search=alone|distilled` (sweeps), `smoke` (1,024 images, 2 epochs: the CI's run
of the comparison sweep).

Measured 2026-11-30 on the 2-core CPU we develop on (no GPU). The machine was
otherwise idle (load 1.1 at the start). The comparison sweep's six trials took
961 s (16 min) with `--parallel=2`: about 4 min for each student alone and 5-7
min for each distilled one.

| seed | student alone | distilled | difference |
|---|---|---|---|
| 0 | 0.8827 | 0.9003 | +1.76 |
| 1 | 0.8773 | 0.8987 | +2.14 |
| 2 | 0.8925 | 0.9019 | +0.94 |
| mean | 0.8842 | 0.9003 | **+1.61** (95% t-interval +0.09 to +3.14) |

Test accuracy, on the 10,000 test images. The teacher scores 0.9223, so
distillation closes 42% of the gap between the student alone and the teacher.
Agreement with the teacher on test rises from 0.914 to 0.945. The spread over
seeds falls from 0.77 to 0.16 points.

Size and speed, from `experiments.benchmark_export --variant` (ONNX Runtime, 1
thread, each model exported and parity-checked, timed in turns, load 1.1):

| model | test acc | parameters | gzip | batch 1 | batch 32, per image | FLOPs |
|---|---|---|---|---|---|---|
| teacher | 0.9223 | 164.4 k | 615 kB | 0.657 ms | 0.429 ms | 7.72 M |
| student, distilled | 0.9003 | 26.7 k | 104 kB | 0.331 ms (1.98x) | 0.086 ms (4.96x) | 0.61 M |

How the recipe was chosen (`val/accuracy`, seed 0, the same 40-epoch budget):
- `search=alone`: label smoothing 0 or 0.1 and mixup 0 or 0.2 all land within
  0.14 points (0.8928-0.8942). The defaults (neither) tie for best.
- `search=distilled`: T in {1, 2, 4} x label weight in {0, 0.5} land within
  0.32 points (0.9060-0.9092). T=4 without the label term is best.

Where distillation did not help (one seed, test accuracy):
- Students that see all 54,000 images (7 epochs, 3,000 steps) do not beat
  the same student alone:
  - (8, 16): alone 0.9094; T=4 0.9029; T=4 with w=0.5 0.9088.
  - A wider student (16, 32, hidden 64): alone 0.9215, distilled 0.9211.
  With all the labels, the student alone is already close to a teacher of
  the same data.
- Mixup (alpha 1, "function matching") lowered both arms at these short
  schedules (T=4: 0.8918 against 0.9029 without it).
- The old setting (a 3-epoch teacher on 10,000 images, distilled for 3 epochs)
  was 0.35 points worse than the student alone.

The gain needs a teacher that knows more than the student's labels (here: 5.4
times as many images), and a long schedule. Distilling from an ImageNet teacher
(MobileNetV2 or EfficientNet-Lite0, fine-tuned at 32 px) was not tried.
"""

from vision import config as config_lib

# The student's labelled images: a fixed random 10,000 of the 54,000 training images (the
# teacher was trained on all of them).
STUDENT_EXAMPLES = 10_000
# The budget of every trial, search and comparison alike, for both variants: 40 epochs of the
# student's images (3,125 steps of 128): "patient" teaching.
EPOCHS = 40.0


def _arg(arg):
  return config_lib.parse_arg(arg, teacher="runs/fashion_mnist", alone=False, temperature=4.0,
                              compare=False, search="", smoke=False)


def get_config(arg: str | None = None):
  arg = _arg(arg)
  config = config_lib.defaults()
  config_lib.use_fashion_mnist(config)
  # The teacher's input spec (configs/fashion_mnist.py): teacher and student share each batch.
  config.data.mean = (0.286,)
  config.data.std = (0.353,)
  config.data.flip = True

  config.model.name = "small_cnn"
  config.model.widths = (8, 16)
  config.model.hidden = 32

  config.data.max_train_examples = STUDENT_EXAMPLES
  config.train.batch_size = 128
  config.train.epochs = EPOCHS
  config.train.log_every_steps = 100
  config.train.eval_every_steps = 390  # every 5 epochs: 8 points on each curve

  config.optim.name = "sgd"
  config.optim.learning_rate = 0.1
  config.optim.weight_decay = 5e-4
  config.optim.schedule = "cosine"
  config.optim.warmup_epochs = 0.5

  config.distill.teachers = tuple(filter(None, arg.teacher.split("+")))
  config.distill.temperature = arg.temperature
  config.distill.hard_label_weight = 0.0
  config.distill.variant = "alone" if arg.alone else "distilled"

  if arg.smoke:
    config.data.max_train_examples = 1024
    config.data.max_eval_examples = 512
    config.train.epochs = 2.0
    config.train.num_steps = None
    config.train.log_every_steps = 4
    config.train.eval_every_steps = 4  # a few points on each curve
  return config


def _search(variant: str) -> dict:
  if variant == "alone":
    return {"distill.variant": ["alone"], "train.label_smoothing": [0.0, 0.1],
            "data.mixup_alpha": [0.0, 0.2]}
  if variant == "distilled":
    return {"distill.temperature": [1.0, 2.0, 4.0], "distill.hard_label_weight": [0.0, 0.5]}
  raise config_lib.ConfigError(
      f"config argument 'search={variant}': expected search=alone or search=distilled")


def get_sweep(arg: str | None = None):
  arg = _arg(arg)
  suffix = "_smoke" if arg.smoke else ""
  if arg.search:
    return {"name": f"distill_fashion_mnist_search_{arg.search}{suffix}", "method": "grid",
            "metric": "val/accuracy", "parameters": _search(arg.search)}
  return {"name": f"distill_fashion_mnist_compare{suffix}", "method": "grid",
          "metric": "test/accuracy", "baseline": {"distill.variant": "alone"},
          "parameters": {"distill.variant": ["alone", "distilled"], "seed": [0, 1, 2]}}
