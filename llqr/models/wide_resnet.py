"""Wide ResNet (pre-activation) for the ``wide-resnet28x10`` presets, as a flat list of stages.

stem conv3x3 16 (no BN); three groups of widths 16k, 32k, 64k (k = 10) with strides 1, 2, 2; head
BN -> ReLU -> avg-pool 8 -> Dense K -> log_softmax. BatchNorm momentum 0.9, eps 1e-5; no conv has
a bias. The first unit of a group is BN -> ReLU, whose output feeds both branches: conv3x3
(stride) -> BN -> ReLU -> dropout -> conv3x3 on the main one, a 1x1 conv (stride, no BN) on the
skip. The other units keep the raw input as the skip: BN -> ReLU -> conv -> BN -> ReLU -> dropout
-> conv, add. Every Conv, BatchNorm and the Dense is its own controlled layer.

Layouts (``units_per_group``):
- 5, the reference code's (one first unit + (28 - 4) // 6 = 4 more): really WRN-34-10,
  46,160,474 parameters for K=10 and 46,218,164 for K=100. The paper presets use it.
- 4, the standard WRN-28-10 ((28 - 4) / 6 units): 36,479,194 / 36,536,884.
The avg-pool 8 expects 32x32 inputs (an 8x8 map after the two strided groups).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from .stages import Add, AvgPool, Builder, Dropout, Flatten, LogSoftmax, Relu, StageNet

BN_MOMENTUM = 0.9
LAYOUTS = {"reference": 5, "standard": 4}  # units per group


def unit(b: Builder, prefix: str, features: int, stride: int, first: bool, dropout: float) -> None:
    b.bn(f"{prefix}_bn1", BN_MOMENTUM, route="fork_both" if first else "fork")
    b.add(Relu(route="both" if first else "main"))
    b.conv(f"{prefix}_conv1", features, 3, stride, route="main")
    b.bn(f"{prefix}_bn2", BN_MOMENTUM, route="main")
    b.add(Relu(route="main"))
    b.add(Dropout(rate=dropout, route="main"))
    b.conv(f"{prefix}_conv2", features, 3, 1, route="main")
    if first:
        b.conv(f"{prefix}_skip_conv", features, 1, stride, route="skip", padding="VALID")
    b.add(Add())


class WideResNet(StageNet):
    num_classes: int = 10
    widen: int = 10
    units_per_group: int = LAYOUTS["reference"]
    dropout_rate: float = 0.0
    base: int = 16
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.nowrap
    def stages(self):
        b = Builder(self.dtype, self.param_dtype)
        b.conv("stem_conv", self.base, 3, 1)
        for g, (mult, stride) in enumerate(((1, 1), (2, 2), (4, 2))):
            features = self.base * mult * self.widen
            for u in range(self.units_per_group):
                unit(b, f"group_{g}_unit_{u}", features, stride if u == 0 else 1, u == 0, self.dropout_rate)
        b.bn("head_bn", BN_MOMENTUM)
        b.add(Relu())
        b.add(AvgPool(window=8, stride=8))
        b.add(Flatten())
        b.dense("logits", self.num_classes)
        b.add(LogSoftmax())
        return b.items
