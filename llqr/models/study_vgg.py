"""VGG-16 and VGG-19 for CIFAR with BatchNorm, GroupNorm or no norm, as a flat list of stages.

The CIFAR VGG of the SVAG studies (the kuangliu/pytorch-cifar layout): conv3x3 (with bias) ->
norm -> ReLU in blocks (64, 64) (128, 128) (256 x3|x4) (512 x3|x4) (512 x3|x4), max-pool 2/2
after each block; flatten (512 features at 32x32 input; that reference's trailing 1x1 average
pool is the identity and omitted) -> one Dense K -> log_softmax. No hidden classifier layers and
no dropout, unlike ``vgg.VGG16BN``.

``norm``: "bn" (momentum 0.9, eps 1e-5, ``batch_stats``), "gn" (GroupNorm, eps 1e-5, 16 groups,
or ``preresnet.group_count`` when the width is not a multiple of 16), "none" (conv -> ReLU).
Parameters for K = 10: VGG-16 14,728,266 (bn or gn), 14,719,818 (none); VGG-19 20,040,522 (bn or
gn), 20,029,514 (none). ``width_divisor`` divides every width (1 = the paper model; larger for
tests). Every Conv, norm and the Dense is one ``layers_i`` group (``preresnet.controlled_tags``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from .preresnet import add_norm
from .stages import Builder, Flatten, LogSoftmax, MaxPool, Relu, StageNet

CONVS_PER_BLOCK = {16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
BLOCK_WIDTHS = (64, 128, 256, 512, 512)
NORMS = ("bn", "gn", "none")


class StudyVGG(StageNet):
    """VGG-``depth`` (16 or 19) for CIFAR with ``norm`` in {"bn", "gn", "none"}."""

    depth: int = 16
    norm: str = "bn"
    num_classes: int = 10
    width_divisor: int = 1
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.nowrap
    def stages(self):
        if self.depth not in CONVS_PER_BLOCK:
            raise ValueError(f"VGG depth {self.depth}; expected one of {tuple(CONVS_PER_BLOCK)}")
        if self.norm not in NORMS:
            raise ValueError(f"VGG norm {self.norm!r}; expected one of {NORMS}")
        b = Builder(self.dtype, self.param_dtype)
        for i, (count, width) in enumerate(zip(CONVS_PER_BLOCK[self.depth], BLOCK_WIDTHS)):
            for j in range(count):
                b.conv(f"block_{i}_conv_{j}", width // self.width_divisor, 3, 1, use_bias=True)
                if self.norm != "none":
                    add_norm(b, f"block_{i}_norm_{j}", self.norm, True)
                b.add(Relu())
            b.add(MaxPool(window=2, stride=2))
        b.add(Flatten())
        b.dense("logits", self.num_classes)
        b.add(LogSoftmax())
        return b.items
