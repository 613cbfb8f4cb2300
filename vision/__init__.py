"""vision: image-recognition experiments in JAX, Flax NNX, grain, Orbax and W&B.

    from vision import config as config_lib
    from vision.train import trainer

    config = config_lib.defaults()               # every key, with its default
    config.model.name = "resnet18"
    report = trainer.train(config, "runs/my_run") # resumable; returns the test report

The command-line entry points live in `experiments/` (`python -m experiments.train`).
"""

from vision import xla_flags

# Before any JAX backend starts: faster CPU convolutions (see vision/xla_flags.py).
xla_flags.apply_cpu_flags()
