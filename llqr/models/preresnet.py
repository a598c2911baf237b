"""Pre-activation ResNet-32 for CIFAR (He et al. 2016), with BatchNorm or GroupNorm, wider variants
("PRN32-4x") and a scale-invariant variant, as a flat list of stages.

**Plain** (``scale_invariant=False``): conv3x3 16w (stem, no BN: the first block pre-activates it);
3 stages of ``blocks`` (5 for PreResNet-32: depth 6n+2) basic pre-activation blocks of width 16w,
32w, 64w (w = ``width``; stride 2 on the first block of stages 2 and 3):

    out = x' + conv2(relu(norm2(conv1(relu(norm1(x))))))

where the skip x' is the raw block input x, or, where the shape changes, a 1x1 stride-2 conv of x
(no norm, as the bearpaw/pytorch-classification PreResNet; ``shortcut="pad"`` gives the
parameter-free option A instead: x subsampled by 2 and zero channels appended); then
norm -> ReLU -> global average pool -> Dense K -> log_softmax. Parameters (K = 10, BN or GN,
affine): 466,714 at width 1 with the conv shortcut (464,154 with ``shortcut="pad"``; "≈ 0.46M"),
7,427,146 at width 4 ("PRN32-4x"); 472,564 at width 1 for K = 100. Convs have no bias.

**Scale-invariant** (``scale_invariant=True``): every conv is directly followed by a norm without
affine parameters, so the network output is invariant to scaling any single conv kernel by c > 0
(BatchNorm in train mode, or GroupNorm in either mode; BatchNorm's running averages in eval mode do
not rescale with the kernel). To that end the variant adds a norm after the stem conv, after each
block's second conv and after each projection conv; every norm drops its scale and bias; and the
final linear layer is *fixed*: a constant matrix drawn deterministically on the host
(``fixed_head``: N(0, 1/fan_in), numpy seed ``head_seed``, no bias) and applied through
``jax.lax.stop_gradient``. It is not in ``params`` at all, so no optimizer, weight decay or
preconditioner can move it, and the trainable parameters are exactly the conv kernels: 463,792
at width 1 and 7,415,488 at width 4 (conv shortcut; K does not matter).

**Norms** (``norm``): "bn": BatchNorm, momentum 0.9, eps 1e-5, batch statistics when ``train``,
running averages (``batch_stats``) otherwise; "gn": GroupNorm, eps 1e-5, ``group_count(C)`` groups
= 16 when C is a multiple of 16 (every width here), else gcd(16, C) (so fewer than 16 when
C < 16), no state. Conventions as ``llqr.models.stages``: NHWC input, ``__call__(x, train)``,
(N, K) log-probabilities, every Conv, affine norm and Dense one top-level ``layers_i`` group
(``controlled_tags`` lists them; a non-affine BatchNorm owns only ``batch_stats``).

The norm and fixed-head stages defined here (``Norm``, ``FixedDense``, ``fixed_head``,
``fixed_linear``) are shared with ``study_vgg`` and ``study_mlp``.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .stages import (
    Add,
    AvgPool,
    BatchNorm,
    Builder,
    ChannelPad,
    Conv,
    Dense,
    GlobalAvgPool,
    LogSoftmax,
    Relu,
    Stage,
    StageNet,
)

BN_MOMENTUM = 0.9
EPSILON = 1e-5
GROUPS = 16
NORMS = ("bn", "gn")
SHORTCUTS = ("conv", "pad")
STAGE_WIDTHS = (16, 32, 64)


def group_count(channels: int, groups: int = GROUPS) -> int:
    """GroupNorm groups for ``channels``: ``groups`` when it divides them, else gcd(groups, channels)."""
    return groups if channels % groups == 0 else math.gcd(groups, channels)


class Norm(Stage):
    """BatchNorm ("bn") or GroupNorm ("gn"), with or without affine parameters (``affine``)."""

    kind: str = "bn"
    affine: bool = True
    momentum: float = BN_MOMENTUM
    epsilon: float = EPSILON
    groups: int = GROUPS
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def op(self, x, train):
        if self.kind == "bn":
            return nn.BatchNorm(use_running_average=not train, momentum=self.momentum, epsilon=self.epsilon,
                                use_scale=self.affine, use_bias=self.affine, dtype=self.dtype,
                                param_dtype=self.param_dtype)(x)
        if self.kind == "gn":
            return nn.GroupNorm(num_groups=group_count(x.shape[-1], self.groups), epsilon=self.epsilon,
                                use_scale=self.affine, use_bias=self.affine, dtype=self.dtype,
                                param_dtype=self.param_dtype)(x)
        raise ValueError(f"unknown norm {self.kind!r}; expected 'bn' or 'gn'")


def fixed_head(fan_in: int, features: int, seed: int = 0) -> np.ndarray:
    """The fixed last layer's kernel: N(0, 1/fan_in) entries from numpy's generator ``seed``
    (float32, shape (fan_in, features)); the same matrix on every call, host or device."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((fan_in, features)) / math.sqrt(fan_in)).astype(np.float32)


def fixed_linear(x, kernel):
    """x @ kernel with no gradient to ``kernel`` (a non-trainable linear map)."""
    return x @ jax.lax.stop_gradient(jnp.asarray(kernel, x.dtype))


class FixedDense(Stage):
    """A linear layer fixed at ``fixed_head(fan_in, features, seed)``: a constant, not a parameter
    (passive stage: no ``layers_i`` group)."""

    features: int = 0
    seed: int = 0

    def op(self, x, train):
        return fixed_linear(x, fixed_head(x.shape[-1], self.features, self.seed))


def controlled_tags(model: StageNet) -> dict[str, str]:
    """``{"layers_i": tag}`` for every stage that owns parameters: Conv, Dense, the repo's
    BatchNorm stage and affine ``Norm`` stages (``stages.layer_tags`` does not know ``Norm``)."""
    out = {}
    for i, stage in enumerate(model.stages()):
        if isinstance(stage, (Conv, BatchNorm, Dense)) or (isinstance(stage, Norm) and stage.affine):
            out[f"layers_{i}"] = stage.tag or type(stage).__name__
    return out


def add_norm(b: Builder, tag: str, kind: str, affine: bool, *, route: str = "x") -> Builder:
    """Append a ``Norm`` stage carrying the builder's dtypes."""
    return b.add(Norm(route=route, tag=tag, kind=kind, affine=affine, dtype=b.dtype, param_dtype=b.param_dtype))


def preact_block(b: Builder, prefix: str, features: int, stride: int, in_features: int, *, norm: str,
                 scale_invariant: bool, shortcut: str) -> None:
    """norm-ReLU-conv-norm-ReLU-conv (+ norm when scale-invariant) on the main branch, the raw
    input (or its projection / padded subsample where the shape changes) on the skip."""
    affine = not scale_invariant
    add_norm(b, f"{prefix}_norm1", norm, affine, route="fork")
    b.add(Relu(route="main"))
    b.conv(f"{prefix}_conv1", features, 3, stride, route="main")
    add_norm(b, f"{prefix}_norm2", norm, affine, route="main")
    b.add(Relu(route="main"))
    b.conv(f"{prefix}_conv2", features, 3, 1, route="main")
    if scale_invariant:
        add_norm(b, f"{prefix}_norm3", norm, affine, route="main")
    if stride != 1 or features != in_features:
        if shortcut == "conv":
            b.conv(f"{prefix}_skip_conv", features, 1, stride, route="skip")
            if scale_invariant:
                add_norm(b, f"{prefix}_skip_norm", norm, affine, route="skip")
        else:
            if stride != 1:
                b.add(AvgPool(route="skip", window=1, stride=stride))  # a 1x1 window: subsampling
            b.add(ChannelPad(route="skip", extra=features - in_features))
    b.add(Add())


class PreResNet(StageNet):
    """PreResNet-(6·blocks+2) for CIFAR; defaults: PreResNet-32, BatchNorm, width 1, plain."""

    num_classes: int = 10
    width: int = 1
    blocks: int = 5
    norm: str = "bn"
    scale_invariant: bool = False
    shortcut: str = "conv"
    head_seed: int = 0
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.nowrap
    def stages(self):
        if self.norm not in NORMS:
            raise ValueError(f"PreResNet norm {self.norm!r}; expected one of {NORMS}")
        if self.shortcut not in SHORTCUTS:
            raise ValueError(f"PreResNet shortcut {self.shortcut!r}; expected one of {SHORTCUTS}")
        si = self.scale_invariant
        b = Builder(self.dtype, self.param_dtype)
        widths = [w * self.width for w in STAGE_WIDTHS]
        b.conv("stem_conv", widths[0], 3, 1)
        if si:
            add_norm(b, "stem_norm", self.norm, False)
        in_features = widths[0]
        for s, features in enumerate(widths):
            for j in range(self.blocks):
                stride = 2 if s > 0 and j == 0 else 1
                preact_block(b, f"stage_{s}_block_{j}", features, stride, in_features, norm=self.norm,
                             scale_invariant=si, shortcut=self.shortcut)
                in_features = features
        add_norm(b, "final_norm", self.norm, not si)
        b.add(Relu())
        b.add(GlobalAvgPool())
        if si:
            b.add(FixedDense(tag="fixed_logits", features=self.num_classes, seed=self.head_seed))
        else:
            b.dense("logits", self.num_classes)
        b.add(LogSoftmax())
        return b.items
