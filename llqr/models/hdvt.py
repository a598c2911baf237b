"""DHVT (Lu et al. 2022, "Bridging the Gap Between Vision Transformers and Convolutional Neural
Networks on Small Datasets"), the SINGD study's "HDVT".

Configuration: DHVT-T (ArieSeirack/DHVT ``vision_transformer.py``: ``dhvt_tiny_cifar_patch4``,
the model of its ``run_code_cifar.sh``): D 192, 12 blocks, 4 heads, MLP ratio 4, qkv bias, patch 4
on 32x32 CIFAR-100 (8x8 = 64 tokens). At 224 (ImageWoof) the patch is 16, as the reference's
``dhvt_tiny_domain_patch16`` (the same D, depth and heads; 14x14 tokens); the patch follows the
input: 4 below 64 px, 16 otherwise [U: the rule is ours]. The SINGD appendix's own statement of
the variant was [not retrieved]: we use the reference's CIFAR-100 model.

Layout (LayerNorm eps 1e-6 but the head-token norm's 1e-5, as the reference):
    SOPE   x·α + β (per RGB channel) -> log2(patch) ConvBN(3x3, stride 2, no bias) widths
           D/2, D (patch 4) or D/8 .. D (patch 16), GELU between them -> ·α' + β' (per channel)
           -> tokens; a class token first (truncated normal 0.02); no position table (SOPE's
           overlapping convs carry the positions)
    block  x + HI-MHSA(LN(x)); x + DAFF(LN(x))
    tail   LN -> class token -> Dense K; log_softmax in float32
HI-MHSA (head interaction): each head's mean over all tokens, (B, h, D/h), -> ht_proj Dense(D/h ->
D) (one kernel shared by the h heads) -> LN(D/h) per head -> GELU -> + a learnt (h, D) table: h
head tokens appended to the sequence; FusedSelfAttention (``llqr.models.attention``: one qkv Dense
D -> 3D, proj Dense) over the N + h tokens; the head tokens' outputs are averaged into the class
token's and dropped.
DAFF (dynamic aggregation feed-forward), hidden M = 4D, on the patch tokens as an image:
Conv1x1(D -> M) -> BN -> GELU -> r; r + GELU(BN(depthwise Conv3x3(M)(r))) -> Conv1x1(M -> D) ->
BN -> tokens out; their spatial mean -> compress Dense(D -> D/4) -> GELU -> excitation Dense(D/4 ->
D) scales the class token (no gate: the reference's), which passes no conv.
BatchNorm as torch's (eps 1e-5, momentum 0.1, i.e. flax 0.9; the reference's SyncBatchNorm in
SOPE is one BatchNorm per device here). Dense kernels truncated normal 0.02, zero biases (the
reference's ``_init_vit_weights``); convs Flax's default [deviation: torch's default init]. The
reference's dropouts and stochastic depth default to 0 and are left out.

Parameters, with D, h heads, M = 4D, K classes, BN/LN/affine 2c each:
    SOPE patch 4    6 + 27·D/2 + D + 9·D/2·D + 2D + 2D
    class token     D
    block           2D + [(D/h)·D + D + 2D/h + h·D + 3D² + 3D + D² + D] + 2D
                    + [D·M + M + 2M + 9M + M + 2M + M·D + D + 2D + (D·D/4 + D/4) + (D/4·D + D)]
    tail            2D + D·K + K
DHVT-T @32 (patch 4): 169,446 + 192 + 12 · 484,944 + 384 + 19,300 = 6,008,650 for CIFAR-100;
at K 10 5,991,280. @224 (patch 16: SOPE's 3x3 convs 3 -> 24 -> 48 -> 96
-> 192 with BN and the affines, 219,486): 6,041,320 at K 10. The count depends on the image size
only through the patch.

Kronecker capture (SINGD/KFAC/IKFAC, ``llqr.optim.capture``), as the SINGD code treats torch's
Linear/Conv2d and nothing else: SOPE's convs (plain Convs, rows = batch x positions), ht_proj (a
Dense on the (B, h, D/h) head means: rows = batch x heads), the fused qkv and proj (rows = batch x
(N + h) tokens), DAFF's conv1/conv3 (1x1 Convs over the patch tokens only: the class token is not
a row), its depthwise conv2 (grouped: A over the 9 taps of the channel-averaged input), compress
and excitation (Dense on the pooled (B, D) features: one row per sample), and the head (a Dense
on the class token only: one row per sample). The affines, the head-token table, the class token,
LayerNorms and BatchNorms get the plain gradient.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp

from .attention import FusedSelfAttention

BN_MOMENTUM = 0.9  # torch's BatchNorm momentum 0.1
BN_EPS = 1e-5
LN_EPS = 1e-6  # the reference's norm_layer partial(nn.LayerNorm, eps=1e-6)
SMALL_IMAGE = 64  # [U] inputs below this side get the CIFAR patch
TRUNC = nn.initializers.truncated_normal(0.02)


def _gelu(x):
    return nn.gelu(x, approximate=False)  # torch's nn.GELU default (exact erf form)


def _bn(train: bool, name: str):
    return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS, name=name)


def sope_widths(dim: int, patch: int) -> tuple[int, ...]:
    """The output widths of SOPE's stride-2 convs: the reference's patch 4 (D/2, D) and 16 (D/8,
    D/4, D/2, D)."""
    if patch not in (4, 16):
        raise ValueError(f"DHVT's SOPE is built here for patch 4 or 16 (got {patch})")
    n = int(math.log2(patch))
    return tuple(dim // 2 ** (n - 1 - i) for i in range(n))


class Affine(nn.Module):
    """x · α + β per channel (the reference's Affine: α ones, β zeros)."""

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        alpha = self.param("alpha", nn.initializers.ones, (c,))
        beta = self.param("beta", nn.initializers.zeros, (c,))
        return x * alpha.astype(x.dtype) + beta.astype(x.dtype)


class SOPE(nn.Module):
    """Sequential overlapping patch embedding: (B, H, W, 3) -> (B, H/p · W/p, D)."""

    dim: int
    patch: int

    @nn.compact
    def __call__(self, x, train: bool):
        h = Affine(name="pre_affine")(x)
        widths = sope_widths(self.dim, self.patch)
        for i, w in enumerate(widths):
            h = nn.Conv(w, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=False, name=f"conv{i}")(h)
            h = _bn(train, f"bn{i}")(h)
            h = _gelu(h) if i < len(widths) - 1 else h
        h = Affine(name="post_affine")(h)
        return h.reshape(h.shape[0], -1, self.dim)


class HIAttention(nn.Module):
    """Head-interaction MHSA on (B, N, D) with the class token first."""

    heads: int

    @nn.compact
    def __call__(self, x):
        b, n, d = x.shape
        hd = d // self.heads
        means = x.reshape(b, n, self.heads, hd).mean(axis=1)  # (B, h, D/h)
        ht = nn.Dense(d, kernel_init=TRUNC, name="ht_proj")(means).reshape(b, self.heads, self.heads, hd)
        ht = _gelu(nn.LayerNorm(epsilon=1e-5, name="ht_norm")(ht)).reshape(b, self.heads, d)
        ht = ht + self.param("head_pos", TRUNC, (1, self.heads, d)).astype(ht.dtype)
        out = FusedSelfAttention(self.heads, qkv_bias=True, kernel_init=TRUNC, name="mhsa")(
            jnp.concatenate([x, ht], axis=1))
        cls = out[:, :1] + out[:, n:].mean(axis=1, keepdims=True)
        return jnp.concatenate([cls, out[:, 1:n]], axis=1)


class DAFF(nn.Module):
    """Dynamic aggregation feed-forward on (B, 1 + s², D): convs on the patch tokens, an SE-like
    rescaling of the class token."""

    hidden: int

    @nn.compact
    def __call__(self, x, train: bool):
        b, n, d = x.shape
        side = math.isqrt(n - 1)
        cls, t = x[:, :1], x[:, 1:].reshape(b, side, side, d)
        r = _gelu(_bn(train, "bn1")(nn.Conv(self.hidden, (1, 1), name="conv1")(t)))
        h = nn.Conv(self.hidden, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=self.hidden, name="conv2")(r)
        h = r + _gelu(_bn(train, "bn2")(h))
        t = _bn(train, "bn3")(nn.Conv(d, (1, 1), name="conv3")(h))
        w = _gelu(nn.Dense(d // 4, kernel_init=TRUNC, name="compress")(t.mean(axis=(1, 2))))
        w = nn.Dense(d, kernel_init=TRUNC, name="excitation")(w)
        return jnp.concatenate([cls * w[:, None, :], t.reshape(b, -1, d)], axis=1)


class DHVT(nn.Module):
    """DHVT-T (defaults: D 192, 12 blocks, 4 heads, MLP ratio 4); the patch follows the input size."""

    num_classes: int = 100
    dim: int = 192
    depth: int = 12
    heads: int = 4
    mlp_ratio: int = 4

    @nn.compact
    def __call__(self, x, train: bool = False):
        d = self.dim
        h = SOPE(d, 4 if x.shape[1] < SMALL_IMAGE else 16, name="sope")(x, train)
        cls = self.param("cls_token", TRUNC, (1, 1, d)).astype(h.dtype)
        h = jnp.concatenate([jnp.broadcast_to(cls, (h.shape[0], 1, d)), h], axis=1)
        for i in range(self.depth):
            h = h + HIAttention(self.heads, name=f"block{i}_attn")(
                nn.LayerNorm(epsilon=LN_EPS, name=f"block{i}_norm1")(h))
            h = h + DAFF(self.mlp_ratio * d, name=f"block{i}_daff")(
                nn.LayerNorm(epsilon=LN_EPS, name=f"block{i}_norm2")(h), train)
        h = nn.LayerNorm(epsilon=LN_EPS, name="norm")(h)
        logits = nn.Dense(self.num_classes, kernel_init=TRUNC, name="head")(h[:, 0])
        return nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)))
