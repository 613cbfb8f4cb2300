"""Distils a Fashion-MNIST CNN (the quickstart's) into a CNN with ~15x fewer parameters.

Commands (teacher first, then the distilled student and, for comparison, the
same student trained alone with the same data, steps and seed):

    python -m experiments.train --config=configs/fashion_mnist.py --workdir=runs/fmnist_teacher \
        --config.data.max_train_examples=10000 --config.train.epochs=3
    python -m experiments.train --config=configs/distill_fashion_mnist.py:teacher=runs/fmnist_teacher \
        --workdir=runs/fmnist_student
    python -m experiments.train --config=configs/distill_fashion_mnist.py:alone \
        --workdir=runs/fmnist_student_alone

Arguments: `teacher=DIR` (a model directory; `DIR1+DIR2+...` is an ensemble
teacher), `alone` (no teacher: the baseline), `temperature=T`, `smoke`.

Setting: 10,000 training examples (a 3-epoch budget, 237 steps of 128), the
full 6,000-example validation split and 10,000-example test split. Student:
two conv stages (8, 16), hidden layer 32 (~15x fewer parameters than the
teacher's 24/48/96 + 128). Distillation: T = 4, loss = 0.5·T²·KL + 0.5·CE
(teacher and student see the same flipped batch).

Measured result: MEASURED_RESULT
"""

from vision import config as config_lib


def get_config(arg: str | None = None):
  arg = config_lib.parse_arg(arg, teacher="runs/fmnist_teacher", alone=False, temperature=4.0,
                             smoke=False)
  config = config_lib.defaults()
  config.data.source = f"idx:{config_lib.DEBIAN_FASHION_MNIST}"
  config.data.class_names = config_lib.FASHION_MNIST_CLASSES
  # The teacher's input spec (configs/fashion_mnist.py): teacher and student share each batch.
  config.data.mean = (0.286,)
  config.data.std = (0.353,)
  config.data.flip = True
  config.data.max_train_examples = 10_000

  config.model.name = "small_cnn"
  config.model.widths = (8, 16)
  config.model.hidden = 32

  config.train.batch_size = 128
  config.train.epochs = 3.0
  config.train.log_every_steps = 25

  config.optim.name = "sgd"
  config.optim.learning_rate = 0.1
  config.optim.weight_decay = 5e-4
  config.optim.schedule = "cosine"
  config.optim.warmup_epochs = 0.5

  if not arg.alone:
    config.distill.teachers = tuple(filter(None, arg.teacher.split("+")))
    config.distill.temperature = arg.temperature
    config.distill.hard_label_weight = 0.5

  if arg.smoke:
    config.data.max_train_examples = 1024
    config.data.max_eval_examples = 512
    config.train.epochs = 1.0
    config.train.log_every_steps = 4
  return config
