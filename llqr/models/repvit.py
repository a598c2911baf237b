"""RepViT (Wang et al. 2023, "RepViT: Revisiting Mobile CNN From ViT Perspective"), the SINGD
study's RepViT, in its training-time (un-fused) form.

Configuration: RepViT-M0.9 (THU-MIG/RepViT ``model/repvit.py``, ``repvit_m0_9``: the smallest
variant of the published paper), without the distillation head (that function's default). The
SINGD appendix's own statement of the variant was [not retrieved]: we use the reference's
smallest model. Adapted to 32x32 [U, ours]: on images under 64 px the two stem convs have stride 1
instead of 2, so the first stage runs at 32x32 and the last at 4x4 (DHVT's README, fixing its
CIFAR CNN baselines, keeps the first stage at the input resolution the same way); at 224 the stem
is the reference's (stride 4 in all, stages at 56, 28, 14, 7).

Layout (every block: kernel 3, expansion 2; ``M0_9`` lists channels, SE, stride per block):
    stem   ConvBN(3 -> C0/2, 3x3) -> GELU -> ConvBN(C0/2 -> C0, 3x3)
    block, stride 1 (C -> C): token mixer RepVGGDW(C) [-> SE(C)]; channel mixer
           x + ConvBN(2C -> C, BN scale 0)(GELU(ConvBN(C -> 2C, 1x1)(x)))
    block, stride 2 (C -> C'): token mixer ConvBN(C, 3x3 depthwise, stride 2) [-> SE(C)] ->
           ConvBN(C -> C', 1x1); the same channel mixer on C'
    head   global mean -> BatchNorm -> Dense K; log_softmax in float32
ConvBN is the reference's Conv2d_BN: a bias-free Conv and a BatchNorm. RepVGGDW(C) is
BN(ConvBN(3x3 depthwise)(x) + Conv(1x1 depthwise, bias)(x) + x): the three branches (3x3, 1x1,
identity) and both BatchNorms are kept as separate layers, as the reference trains them; its
``fuse()`` folds them into one 3x3 depthwise conv for inference only, which we never need. SE is
timm's SqueezeExcite(C, 0.25): x · sigmoid(Conv1x1(ReLU(Conv1x1(mean_hw(x))))) with
R = make_divisible(C/4, 8) reduced channels and biases. BatchNorm as torch's (eps 1e-5,
running-average momentum 0.1, i.e. flax 0.9); Flax's default initialisers except where the
reference sets one (BN scale 0 on each channel mixer's last BN, truncated-normal 0.02 head).

Parameters, with BN(c) = 2c (scale, bias), K classes:
    ConvBN(a -> b, k, groups g)   b·(a/g)·k² + 2b
    RepVGGDW(C)                   (9C + 2C) + (C + C) + 2C = 15C
    SE(C)                         (C·R + R) + (R·C + C)
    channel mixer (C, hidden H)   ConvBN(C -> H, 1) + ConvBN(H -> C, 1) = 2CH + 2H + 2C
    head                          2C + C·K + K
M0.9, C0 = 48: stem 11,160; blocks 4,706,632; head 2·384 + 384·K + K: 4,757,060 for CIFAR-100
and 4,722,410 at K 10, at any image size (the stem's stride changes no shape of a parameter).
The reference's own log (``logs/repvit_m0_9_distill_300e.txt``: 5,489,328 with two heads at
K 1000) is the same count plus its distillation head (tests/test_singd_cnns.py).

Kronecker capture (SINGD/KFAC/IKFAC, ``llqr.optim.capture``), as the SINGD code treats torch's
Conv2d/Linear: every ConvBN conv (plain or depthwise: a depthwise one as a grouped Conv2d, A over
the k² taps of the channel-averaged input), RepVGGDW's 1x1 depthwise conv (grouped: A over its
one tap + bias), SE's two 1x1 convs (plain convs on the pooled (B, 1, 1, C) features: one row
per sample, exact), and the head Dense. The BatchNorms (the head's included) and the identity
branch have no preconditioned weight.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

BN_MOMENTUM = 0.9  # torch's BatchNorm momentum 0.1
BN_EPS = 1e-5
SMALL_IMAGE = 64  # [U] inputs below this side get the stride-1 (CIFAR) stem

# RepViT-M0.9 (reference ``repvit_m0_9``): (output channels, SE, stride) per block; kernel 3, expansion 2
M0_9 = ((48, 1, 1), (48, 0, 1), (48, 0, 1),
        (96, 0, 2), (96, 1, 1), (96, 0, 1), (96, 0, 1),
        (192, 0, 2), *((192, 1, 1), (192, 0, 1)) * 7, (192, 0, 1),
        (384, 0, 2), (384, 1, 1), (384, 0, 1))


def make_divisible(v: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """The nearest multiple of ``divisor`` (at least ``divisor``), one step up where rounding lost
    more than 1 - round_limit of ``v``: the reference's ``_make_divisible`` (round_limit 0.9) and
    timm's SE reduction (round_limit 0)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < round_limit * v else new


def _gelu(x):
    return nn.gelu(x, approximate=False)  # torch's nn.GELU default (exact erf form)


def _bn(train: bool, name: str, zero_scale: bool = False):
    return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS,
                        scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones, name=name)


class ConvBN(nn.Module):
    """The reference's Conv2d_BN: Conv (no bias, padding (k-1)/2, ``groups``) -> BatchNorm."""

    features: int
    kernel: int = 1
    stride: int = 1
    groups: int = 1
    zero_scale: bool = False  # the reference's bn_weight_init=0

    @nn.compact
    def __call__(self, x, train: bool):
        p = (self.kernel - 1) // 2
        h = nn.Conv(self.features, (self.kernel, self.kernel), strides=(self.stride, self.stride),
                    padding=((p, p), (p, p)), feature_group_count=self.groups, use_bias=False, name="conv")(x)
        return _bn(train, "bn", self.zero_scale)(h)


class RepVGGDW(nn.Module):
    """BN(3x3 depthwise ConvBN + 1x1 depthwise conv (bias) + identity): the training-time branches."""

    @nn.compact
    def __call__(self, x, train: bool):
        c = x.shape[-1]
        h = ConvBN(c, 3, groups=c, name="conv3x3")(x, train)
        h = h + nn.Conv(c, (1, 1), feature_group_count=c, name="conv1x1")(x)
        return _bn(train, "bn")(h + x)


class SqueezeExcite(nn.Module):
    """timm's SqueezeExcite(C, rd_ratio 0.25): 1x1 convs on the spatial mean, sigmoid gate."""

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = nn.relu(nn.Conv(make_divisible(c / 4, 8, round_limit=0.0), (1, 1), name="fc1")(s))
        return x * nn.sigmoid(nn.Conv(c, (1, 1), name="fc2")(s))


class RepViTBlock(nn.Module):
    """Token mixer (spatial, depthwise) then a residual channel mixer (1x1 convs, expansion 2)."""

    features: int
    stride: int
    se: bool

    @nn.compact
    def __call__(self, x, train: bool):
        c = x.shape[-1]
        if self.stride == 2:
            x = ConvBN(c, 3, stride=2, groups=c, name="token_dw")(x, train)
            x = SqueezeExcite(name="se")(x) if self.se else x
            x = ConvBN(self.features, 1, name="token_pw")(x, train)
            hidden = 2 * self.features
        else:
            if c != self.features:
                raise ValueError(f"a stride-1 RepViT block keeps its width ({c} -> {self.features})")
            x = RepVGGDW(name="token_repvggdw")(x, train)
            x = SqueezeExcite(name="se")(x) if self.se else x
            hidden = make_divisible(2 * c, 8)
        h = _gelu(ConvBN(hidden, 1, name="channel_expand")(x, train))
        return x + ConvBN(self.features, 1, zero_scale=True, name="channel_project")(h, train)


class RepViT(nn.Module):
    """RepViT in training form (default: M0.9 blocks ``M0_9``; ``blocks`` smaller for tests)."""

    num_classes: int = 100
    blocks: tuple = M0_9

    @nn.compact
    def __call__(self, x, train: bool = False):
        stride = 1 if x.shape[1] < SMALL_IMAGE else 2
        c0 = make_divisible(self.blocks[0][0], 8)
        h = _gelu(ConvBN(c0 // 2, 3, stride=stride, name="stem0")(x, train))
        h = ConvBN(c0, 3, stride=stride, name="stem1")(h, train)
        for i, (c, se, s) in enumerate(self.blocks):
            h = RepViTBlock(make_divisible(c, 8), s, bool(se), name=f"block{i}")(h, train)
        h = _bn(train, "head_bn")(jnp.mean(h, axis=(1, 2)))
        logits = nn.Dense(self.num_classes, kernel_init=nn.initializers.truncated_normal(0.02), name="head")(h)
        return nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)))
