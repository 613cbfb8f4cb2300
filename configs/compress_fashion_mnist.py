"""Pruning and quantization-aware training of the quickstart CNN on Fashion-MNIST.

Commands (dense first: the QAT runs fine-tune it; results in the table below):

    python -m experiments.train --config=configs/compress_fashion_mnist.py \
        --workdir=runs/compress/dense
    python -m experiments.train --config=configs/compress_fashion_mnist.py:sparsity=0.75 \
        --workdir=runs/compress/prune75                           # also 0.5, 0.9
    python -m experiments.train --config=configs/compress_fashion_mnist.py:sparsity=0.5,channel \
        --workdir=runs/compress/channel50
    python -m experiments.shrink --workdir=runs/compress/channel50 \
        --out=runs/compress/channel50_narrow                      # the narrower model
    python -m experiments.train --config=configs/compress_fashion_mnist.py:qat,init=runs/compress/dense \
        --workdir=runs/compress/qat
    python -m experiments.train \
        --config=configs/compress_fashion_mnist.py:qat,sparsity=0.75,init=runs/compress/prune75 \
        --workdir=runs/compress/qat_prune75
    python -m experiments.benchmark_export --compare=runs/compress/dense,runs/compress/prune75,...

Arguments: `sparsity=S` (gradual magnitude pruning to S, Zhu & Gupta 2017, between 10% and
70% of training), `epochs=E` (shorter runs than the recipe's), `channel` (prune whole conv output channels instead of weights), `qat`
(int8 quantization-aware training with Qwix, 1.5 epochs at LR 0.01 from `init=DIR`;
with `sparsity` too, the masks are taken from DIR's zeros and kept fixed), `smoke`.

Recipe: the quickstart's (configs/fashion_mnist.py: three conv stages 24/48/96, hidden 128,
6.5 epochs of SGD with Nesterov momentum, cosine schedule, flips, label smoothing 0.1).

RESULTS_PLACEHOLDER
"""

import importlib.util
import pathlib

from vision import config as config_lib


def _quickstart(arg: str | None):
  path = pathlib.Path(__file__).with_name("fashion_mnist.py")
  spec = importlib.util.spec_from_file_location("fashion_mnist_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def get_config(arg: str | None = None):
  arg = config_lib.parse_arg(arg, sparsity=0.0, channel=False, qat=False, init="", epochs=0.0,
                             smoke=False)
  config = _quickstart("smoke" if arg.smoke else None)
  if arg.epochs:
    config.train.epochs = arg.epochs
  if arg.sparsity:
    config.prune.sparsity = arg.sparsity
    config.prune.granularity = "channel" if arg.channel else "unstructured"
  if arg.qat:
    if not arg.init:
      raise config_lib.ConfigError("config argument 'qat' needs 'init=DIR' (the float model "
                                   "directory that quantization-aware training fine-tunes)")
    config.model.init_from = arg.init
    config.quant.mode = "qat"
    config.train.epochs = arg.epochs or (1.0 if arg.smoke else 1.5)
    config.optim.learning_rate = 0.01
    config.optim.warmup_epochs = 0.0
    if arg.sparsity:
      # The pruned model's zeros are the lowest magnitudes: masks from step 0, then fixed.
      config.prune.start = config.prune.end = 0.0
  return config
