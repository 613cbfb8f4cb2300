"""Compression: pruning and quantization-aware training that plug into the ordinary run.

    config.prune.sparsity = 0.75                 # vision.compress.prune: masks in the optimizer
    config.quant.mode = "qat"                    # vision.compress.quant: Qwix fake-quant int8
    python -m experiments.shrink --workdir=runs/channel50 --out=runs/channel50_narrow

Each variant sits beside the core: pruning is an optax transformation chained
after the optimizer (its masks are optimizer state, so checkpoints carry them),
quantization-aware training is the model itself, wrapped by Qwix, and channel
surgery (`vision.compress.channels`) turns a channel-pruned model directory into
a narrower one. The training loop and the pure step read the same as without them.
"""
