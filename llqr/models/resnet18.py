"""ResNet-18 and -34, CIFAR variant (3x3 stem, no max-pool), as a flat list of stages.

stem conv3x3/1 (no bias) -> BN -> ReLU; BasicBlocks in four stages of widths 64, 128, 256, 512
(``blocks`` per stage: (2, 2, 2, 2) = ResNet-18, (3, 4, 6, 3) = ResNet-34; stride 2 on the first
block of stages 2-4, where a 1x1 conv + BN projects the skip); global average pool -> Dense K ->
log_softmax. BatchNorm uses Flax's defaults (momentum 0.99, eps 1e-5). Every Conv, BatchNorm and
the Dense is its own controlled layer. ResNet-18: 11,173,962 parameters for K=10, 11,220,132 for
K=100; ResNet-34: 21,282,122 for K=10 (torchvision's with the 3x3 stem, the HyperbolicLR study's
ResNetCIFAR). ``width`` scales all channels (64 = the paper model; smaller for tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from .stages import Add, Builder, GlobalAvgPool, LogSoftmax, Relu, StageNet

BN_MOMENTUM = 0.99  # Flax default, as the reference


def basic_block(b: Builder, prefix: str, features: int, stride: int, project: bool) -> None:
    """conv-BN-ReLU, conv-BN, (+ projected) skip, add, ReLU; the skip is the block input."""
    b.conv(f"{prefix}_conv1", features, 3, stride, route="fork")
    b.bn(f"{prefix}_bn1", BN_MOMENTUM, route="main")
    b.add(Relu(route="main"))
    b.conv(f"{prefix}_conv2", features, 3, 1, route="main")
    b.bn(f"{prefix}_bn2", BN_MOMENTUM, route="main")
    if project:
        b.conv(f"{prefix}_skip_conv", features, 1, stride, route="skip")
        b.bn(f"{prefix}_skip_bn", BN_MOMENTUM, route="skip")
    b.add(Add(relu=True))


class ResNet18(StageNet):
    num_classes: int = 10
    width: int = 64
    blocks: Sequence[int] = (2, 2, 2, 2)
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.nowrap
    def stages(self):
        b = Builder(self.dtype, self.param_dtype)
        b.conv("stem_conv", self.width, 3, 1)
        b.bn("stem_bn", BN_MOMENTUM)
        b.add(Relu())
        in_features, k = self.width, 0
        for s, count in enumerate(self.blocks):
            for j in range(count):
                features, stride = self.width * 2**s, 2 if s > 0 and j == 0 else 1
                basic_block(b, f"block_{k}", features, stride, project=stride != 1 or features != in_features)
                in_features, k = features, k + 1
        b.add(GlobalAvgPool())
        b.dense("logits", self.num_classes)
        b.add(LogSoftmax())
        return b.items
