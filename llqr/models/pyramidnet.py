"""PyramidNet-110 (bottleneck, alpha = 270, no ShakeDrop) for CIFAR, as a flat list of stages.

stem conv3x3 16 (no bias) -> BN; 3 stages x 12 bottleneck units whose width grows by
alpha / 36 = 7.5 per unit (planes = round(16 + 7.5 i), Python's round-half-to-even, out = 4 planes,
final 4 x 286 = 1144); head BN -> ReLU -> avg-pool 8 -> Dense K -> log_softmax. A unit is
BN -> 1x1 -> BN -> ReLU -> 3x3 (stride 2 on the first unit of stages 2 and 3) -> BN -> ReLU ->
1x1 (4 planes) -> BN, plus a parameter-free shortcut: the raw unit input, avg-pooled 2x2 when
strided and zero-padded to the new width; add, no ReLU. BatchNorm momentum 0.9, eps 1e-5; no conv
has a bias. Every Conv, BatchNorm and the Dense is its own controlled layer. 18,323,787 parameters
for K=10, 18,426,837 for K=100. The avg-pool 8 expects 32x32 inputs.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from .stages import Add, AvgPool, Builder, ChannelPad, Flatten, LogSoftmax, Relu, StageNet

BN_MOMENTUM = 0.9
BOTTLENECK = 4


def unit_widths(alpha: float, units_per_stage: int, stem: int):
    """(planes, stride) per unit: the width grows linearly by alpha / (3 units_per_stage)."""
    step = alpha / (3 * units_per_stage)
    width, out = float(stem), []
    for s in range(3):
        for u in range(units_per_stage):
            width += step
            out.append((int(round(width)), 2 if s > 0 and u == 0 else 1))
    return out


class PyramidNet(StageNet):
    num_classes: int = 10
    alpha: float = 270.0
    units_per_stage: int = 12  # (110 - 2) // 9
    stem: int = 16
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.nowrap
    def stages(self):
        b = Builder(self.dtype, self.param_dtype)
        b.conv("stem_conv", self.stem, 3, 1)
        b.bn("stem_bn", BN_MOMENTUM)
        channels = self.stem
        for i, (planes, stride) in enumerate(unit_widths(self.alpha, self.units_per_stage, self.stem)):
            p, out = f"unit_{i}", planes * BOTTLENECK
            b.bn(f"{p}_bn1", BN_MOMENTUM, route="fork")
            b.conv(f"{p}_conv1", planes, 1, 1, route="main", padding="VALID")
            b.bn(f"{p}_bn2", BN_MOMENTUM, route="main")
            b.add(Relu(route="main"))
            b.conv(f"{p}_conv2", planes, 3, stride, route="main")
            b.bn(f"{p}_bn3", BN_MOMENTUM, route="main")
            b.add(Relu(route="main"))
            b.conv(f"{p}_conv3", out, 1, 1, route="main", padding="VALID")
            b.bn(f"{p}_bn4", BN_MOMENTUM, route="main")
            if stride != 1:
                b.add(AvgPool(window=2, stride=2, route="skip"))
            b.add(ChannelPad(extra=out - channels, route="skip"))
            b.add(Add())
            channels = out
        b.bn("head_bn", BN_MOMENTUM)
        b.add(Relu())
        b.add(AvgPool(window=8, stride=8))
        b.add(Flatten())
        b.dense("logits", self.num_classes)
        b.add(LogSoftmax())
        return b.items
