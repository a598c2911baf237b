"""The SVAG study's CIFAR VGG-16 / VGG-19 (its ``vggv2.VGG`` built as ``vgg16_bn`` /
``vgg19_bn`` with ``bn_affine=False``, ``fix_last_layer=True``): BN, GN or no norm.

Layout: per block (64, 64) (128, 128) (256 x3|x4) (512 x3|x4) (512 x3|x4) of bias-free conv3x3
-> norm -> ReLU, a 2x2 *average* pool (the study's default ``pooling='average'``) after each
block, a global average pool (1x1 at 32x32 input), the frozen linear layer (N(0, 2/fan_in)
kernel, zero bias) and log_softmax. No hidden classifier layers, no dropout.

With ``norm`` "bn" or "gn" (affine-free, eps 0, GroupNorm(8)) every conv is directly followed by
a norm, so the output is invariant to a positive scale of any single kernel. With "none" (the
study's ``norm_method='None'``: ``nn.Identity``; the convs stay bias-free, since the ``_bn``
constructors pick the bias-free branch) the net is positively homogeneous instead: scaling one
kernel by c scales the logits by c.

Unlike ``study_vgg.StudyVGG`` (the kuangliu layout: conv biases, affine norms, max pooling, a
trainable head), this is the study's own code path. ``width_divisor`` divides every width (1 =
the study's model; larger for fast tests). Parameters (trainable, any norm): VGG-16 14,710,464,
VGG-19 20,018,880, plus the frozen 512·K + K.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from .stages import AvgPool, Builder, GlobalAvgPool, LogSoftmax, Relu, StageNet
from .svag_layers import NORMS, FrozenLinear, add_study_conv, add_study_norm, frozen_head

CONVS_PER_BLOCK = {16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
BLOCK_WIDTHS = (64, 128, 256, 512, 512)


class SvagVGG(StageNet):
    """The study's VGG-``depth`` (16 or 19) with ``norm`` in {"bn", "gn", "none"}."""

    depth: int = 16
    norm: str = "bn"
    num_classes: int = 10
    width_divisor: int = 1
    head_seed: int = 0
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
                add_study_conv(b, f"block_{i}_conv_{j}", width // self.width_divisor, 3, 1)
                add_study_norm(b, f"block_{i}_norm_{j}", self.norm)
                b.add(Relu())
            b.add(AvgPool(window=2, stride=2))
        b.add(GlobalAvgPool())
        b.add(FrozenLinear(tag="frozen_logits", features=self.num_classes, seed=self.head_seed))
        b.add(LogSoftmax())
        return b.items

    @nn.nowrap
    def frozen_arrays(self):
        """The constants of the frozen last layer (kernel, bias): the study's non-trainable fc."""
        return frozen_head(BLOCK_WIDTHS[-1] // self.width_divisor, self.num_classes, self.head_seed)
