"""ResNet-50 v1.5 (ImageNet; the stride sits on the 3x3 conv), as a flat list of stages.

conv7x7/2 64 (no bias) -> BN -> ReLU -> max-pool 3/2 ('SAME'); bottlenecks [3, 4, 6, 3] of widths
64, 128, 256, 512 (x4 out), each 1x1 -> BN -> ReLU -> 3x3 (stride) -> BN -> ReLU -> 1x1 -> BN, a
1x1 conv + BN projection on the first block of every stage, add, ReLU; global average pool ->
Dense K -> log_softmax. BatchNorm uses Flax's defaults (momentum 0.99, eps 1e-5). Every Conv,
BatchNorm and the Dense is its own controlled layer. 25,557,032 parameters for K=1000 (224x224
input; the count does not depend on the input size). ``width`` and ``blocks`` shrink it for tests.
``stem="cifar"``: a conv3x3/1 stem without the max-pool, the HyperbolicLR study's ResNetCIFAR-50
(torchvision's ResNet-50 with that stem): 23,520,842 parameters for K=10.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from .stages import Add, Builder, GlobalAvgPool, LogSoftmax, MaxPool, Relu, StageNet

BN_MOMENTUM = 0.99  # Flax default, as the reference
EXPANSION = 4


def bottleneck(b: Builder, prefix: str, planes: int, stride: int, project: bool) -> None:
    out = planes * EXPANSION
    b.conv(f"{prefix}_conv1", planes, 1, 1, route="fork")
    b.bn(f"{prefix}_bn1", BN_MOMENTUM, route="main")
    b.add(Relu(route="main"))
    b.conv(f"{prefix}_conv2", planes, 3, stride, route="main")
    b.bn(f"{prefix}_bn2", BN_MOMENTUM, route="main")
    b.add(Relu(route="main"))
    b.conv(f"{prefix}_conv3", out, 1, 1, route="main")
    b.bn(f"{prefix}_bn3", BN_MOMENTUM, route="main")
    if project:
        b.conv(f"{prefix}_skip_conv", out, 1, stride, route="skip")
        b.bn(f"{prefix}_skip_bn", BN_MOMENTUM, route="skip")
    b.add(Add(relu=True))


class ResNet50(StageNet):
    num_classes: int = 1000
    width: int = 64
    blocks: Sequence[int] = (3, 4, 6, 3)
    stem: str = "imagenet"  # or "cifar": conv3x3/1, no max-pool
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.nowrap
    def stages(self):
        b = Builder(self.dtype, self.param_dtype)
        cifar = self.stem == "cifar"
        b.conv("stem_conv", self.width, 3 if cifar else 7, 1 if cifar else 2)
        b.bn("stem_bn", BN_MOMENTUM)
        b.add(Relu())
        if not cifar:
            b.add(MaxPool(window=3, stride=2, padding="SAME"))
        k = 0
        for s, count in enumerate(self.blocks):
            for j in range(count):
                stride = 2 if s > 0 and j == 0 else 1
                bottleneck(b, f"block_{k}", self.width * 2**s, stride, project=j == 0)
                k += 1
        b.add(GlobalAvgPool())
        b.dense("logits", self.num_classes)
        b.add(LogSoftmax())
        return b.items
