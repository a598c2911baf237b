"""ResNet-32 for CIFAR (He et al. 2016, post-activation), as the SVAG study's ``resnet``: its
NOT scale-invariant control for the linear scaling rule (``resnet32_simple_b*_linscale``).

Layout: conv3x3 3->16 -> BN -> ReLU; 3 stages of 5 basic blocks (widths 16, 32, 64; stride 2
entering stages 2 and 3)

    out = relu(bn2(conv2(relu(bn1(conv1(x))))) + skip)

with skip = x, or conv1x1(stride) -> BN where the shape changes (option B); global average pool
(the study's AvgPool2d(8) at 8x8) -> Dense K with bias -> log_softmax.

Everything is trainable and standard, as in the study, whose ``resnet`` constructor swallows the
config's ``fix_last_layer``, ``bn_affine`` and ``norm_method``: BatchNorm with scale and bias
(PyTorch defaults: eps 1e-5, momentum 0.1), convs N(0, 2/(k·k·C_out)) (its init loop), the
Dense PyTorch's default U(±1/√fan_in). Parameters: 466,906 for K = 10 (472,756 for K = 100).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from .stages import Add, Builder, GlobalAvgPool, LogSoftmax, Relu, StageNet
from .svag_layers import StudyNorm, TorchDense, add_study_conv

STAGE_WIDTHS = (16, 32, 64)
BN_EPS = 1e-5  # nn.BatchNorm2d's default


def add_bn(b: Builder, tag: str, *, route: str = "x") -> None:
    b.add(StudyNorm(route=route, tag=tag, kind="bn", affine=True, epsilon=BN_EPS, dtype=b.dtype,
                    param_dtype=b.param_dtype))


def basic_block(b: Builder, prefix: str, features: int, stride: int, in_features: int) -> None:
    """conv-BN-ReLU-conv-BN on the main branch, the (projected) input on the skip, ReLU after the sum."""
    add_study_conv(b, f"{prefix}_conv1", features, 3, stride, route="fork", init_mode="fan_out")
    add_bn(b, f"{prefix}_bn1", route="main")
    b.add(Relu(route="main"))
    add_study_conv(b, f"{prefix}_conv2", features, 3, 1, route="main", init_mode="fan_out")
    add_bn(b, f"{prefix}_bn2", route="main")
    if stride != 1 or features != in_features:
        add_study_conv(b, f"{prefix}_skip_conv", features, 1, stride, route="skip", init_mode="fan_out")
        add_bn(b, f"{prefix}_skip_bn", route="skip")
    b.add(Add(relu=True))


class ResNet32(StageNet):
    """ResNet-(6·blocks+2) for CIFAR; defaults: ResNet-32."""

    num_classes: int = 10
    blocks: int = 5
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.nowrap
    def stages(self):
        b = Builder(self.dtype, self.param_dtype)
        add_study_conv(b, "stem_conv", STAGE_WIDTHS[0], 3, 1, init_mode="fan_out")
        add_bn(b, "stem_bn")
        b.add(Relu())
        in_features = STAGE_WIDTHS[0]
        for s, features in enumerate(STAGE_WIDTHS):
            for j in range(self.blocks):
                basic_block(b, f"stage_{s}_block_{j}", features, 2 if s > 0 and j == 0 else 1, in_features)
                in_features = features
        b.add(GlobalAvgPool())
        b.add(TorchDense(tag="logits", features=self.num_classes, dtype=b.dtype, param_dtype=b.param_dtype))
        b.add(LogSoftmax())
        return b.items
