"""The HyperbolicLR study's small CIFAR-10 CNN (ours, written for the Kim 2024 comparison).

``SimpleCNN``: two blocks of [conv3x3 -> ReLU -> conv3x3 -> ReLU -> max-pool 2/2] with widths 32
and 64 ("SAME" padding, convs with bias), flatten (8 x 8 x 64 = 4096 features at 32x32 input) ->
Dense 256 -> ReLU -> Dense K -> log_softmax. No normalisation, no dropout, so ``init`` returns a
``params`` collection only. Flax's default initialisers (LeCun normal kernels, zero biases).

Parameters for K = 10 and a 32x32x3 input:
    conv 3->32: 3*9*32 + 32 = 896          conv 32->32: 32*9*32 + 32 = 9,248
    conv 32->64: 32*9*64 + 64 = 18,496     conv 64->64: 64*9*64 + 64 = 36,928
    Dense 4096->256: 1,048,832             Dense 256->10: 2,570          total 1,116,970

(The study's own PyTorch SimpleCNN is hyper-parameterised; this fixed layout is ours.)
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp


class SimpleCNN(nn.Module):
    num_classes: int = 10
    widths: Sequence[int] = (32, 64)
    convs_per_block: int = 2
    hidden: int = 256

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = jnp.asarray(x, jnp.float32)
        for width in self.widths:
            for _ in range(self.convs_per_block):
                x = nn.relu(nn.Conv(width, (3, 3), padding="SAME")(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = jnp.reshape(x, (x.shape[0], -1))
        x = nn.relu(nn.Dense(self.hidden)(x))
        return nn.log_softmax(nn.Dense(self.num_classes)(x))
