"""VGG-16 with BatchNorm (CIFAR), as a flat list of stages.

13 conv3x3 (with bias) -> BN -> ReLU in blocks (64, 64) (128, 128) (256 x3) (512 x3) (512 x3),
max-pool 2/2 after each block; flatten (512 at 32x32 input) -> Dropout 0.5 -> Dense 512 -> ReLU ->
Dropout 0.5 -> Dense 512 -> ReLU -> Dense K -> log_softmax. BatchNorm momentum 0.9, eps 1e-5.
Every Conv, BatchNorm and Dense is its own controlled layer. 15,253,578 parameters for K=10,
15,299,748 for K=100. ``width`` divides every width (1 = the paper model; larger for tests).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from .stages import Builder, Dropout, Flatten, LogSoftmax, MaxPool, Relu, StageNet

BN_MOMENTUM = 0.9
DROPOUT = 0.5  # fixed in the reference
BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
HIDDEN = 512


class VGG16BN(StageNet):
    num_classes: int = 10
    dropout_rate: float = DROPOUT
    width_divisor: int = 1
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.nowrap
    def stages(self):
        b = Builder(self.dtype, self.param_dtype)
        d = self.width_divisor
        for i, block in enumerate(BLOCKS):
            for j, features in enumerate(block):
                b.conv(f"block_{i}_conv_{j}", features // d, 3, 1, use_bias=True)
                b.bn(f"block_{i}_bn_{j}", BN_MOMENTUM)
                b.add(Relu())
            b.add(MaxPool(window=2, stride=2))
        b.add(Flatten())
        for i in range(2):
            b.add(Dropout(rate=self.dropout_rate))
            b.dense(f"fc{i}", HIDDEN // d)
            b.add(Relu())
        b.dense("logits", self.num_classes)
        b.add(LogSoftmax())
        return b.items
