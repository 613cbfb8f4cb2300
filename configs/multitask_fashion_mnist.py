"""Fashion-MNIST, multi-task: one small CNN, two heads — the 10 classes and a 5-way garment group.

Command:

    python -m experiments.train --config=configs/multitask_fashion_mnist.py --workdir=runs/multitask

The `garment` head's labels come from the `class` labels through
configs/fashion_mnist_garment.json (tops: T-shirt/top, Pullover, Coat, Shirt;
bottoms: Trouser; dresses: Dress; footwear: Sandal, Sneaker, Ankle boot; bags:
Bag). The same network trained on each task alone, at the same budget:

    python -m experiments.train --config=configs/multitask_fashion_mnist.py:heads=class ...
    python -m experiments.train --config=configs/multitask_fashion_mnist.py:heads=garment ...

Expected result (test split, 10k images; RESULTS_TABLE)

Everything else is the quickstart's recipe (configs/fashion_mnist.py): small
CNN (24, 48, 96), hidden 128, dropout 0.1, horizontal flips, SGD + Nesterov,
6.5 epochs of batch 128, cosine after half an epoch of warm-up, label
smoothing 0.1 (per head). The best checkpoint is picked by
`val/accuracy/mean`; metrics carry the head name last (`val/accuracy/garment`).
`weighting=uncertainty` learns the heads' weights (Kendall et al. 2018)
instead of summing them with weight 1.

Smoke test: `--config=configs/multitask_fashion_mnist.py:smoke`, end to end in under a minute.
"""

import os

from vision import config as config_lib

GARMENT_GROUPS = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                              "fashion_mnist_garment.json")
HEADS = {"class": {"source": "label"}, "garment": {"source": f"map:{GARMENT_GROUPS}"}}


def get_config(arg: str | None = None):
  # heads: '+'-separated ('class+garment'); one of them trains that task alone.
  arg = config_lib.parse_arg(arg, smoke=False, heads="class+garment", weighting="fixed")
  config = config_lib.defaults()
  config_lib.use_fashion_mnist(config)
  config.data.mean = (0.286,)
  config.data.std = (0.353,)
  config.data.flip = True

  config.task.name = "multi_task"
  config.task.weighting = arg.weighting
  for name in filter(None, arg.heads.split("+")):
    if name not in HEADS:
      raise config_lib.ConfigError(
          f"config argument 'heads': {name!r} is not one of {', '.join(HEADS)}")
    config_lib.add_head(config, name, **HEADS[name])

  config.model.name = "small_cnn"
  config.model.widths = (24, 48, 96)
  config.model.dropout = 0.1

  config.train.batch_size = 128
  config.train.epochs = 6.5
  config.train.label_smoothing = 0.1
  config.train.log_every_steps = 100

  config.optim.name = "sgd"
  config.optim.learning_rate = 0.1
  config.optim.weight_decay = 5e-4
  config.optim.schedule = "cosine"
  config.optim.warmup_epochs = 0.5

  if arg.smoke:
    config.data.max_train_examples = 2048
    config.data.max_eval_examples = 512
    config.train.epochs = 2
    config.train.log_every_steps = 8
  return config
