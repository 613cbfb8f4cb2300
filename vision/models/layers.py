"""Layers shared by every architecture in the model zoo.

    from vision.models.layers import Conv
    conv = Conv(3, 64, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, rngs=nnx.Rngs(0))

`Conv` is the framework's convolution: every model builds its convolutions from
it (never from `nnx.Conv` directly), so that how a convolution is lowered can be
chosen in one place per backend. It takes `nnx.Conv`'s constructor arguments
and holds the same parameters (`kernel` [kh, kw, in/groups, out] and `bias`),
so checkpoints do not depend on the lowering.
"""

from flax import nnx

Conv = nnx.Conv
