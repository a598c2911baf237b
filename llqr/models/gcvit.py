"""Global Context Vision Transformer (Hatamizadeh et al. 2023, "Global Context Vision
Transformers"), the SINGD study's GC-ViT.

Configuration [U]: the SINGD appendix's own GC-ViT variant was not retrieved. We use the
reference's smallest model, GC-ViT-XXT (NVlabs/GCVit ``gc_vit_xxtiny``): D 64, four levels of
depths (2, 2, 6, 2) with (2, 4, 8, 16) heads, MLP ratio 3, q/k/v bias, windows (7, 7, 14, 7)
at 224x224 (levels at 56, 28, 14, 7), no layer scale.

Layout from the input (``gcvit_layout``) [U, ours for small images]: the reference's stem
(3x3 conv at stride 2, then a stride-2 ``ReduceSize``) divides the image by 4; images of at most
32 px get the first conv at stride 1 instead (stem /2), so CIFAR's levels are 16, 8, 4, 2 as a
patch-2 Swin's. Each level keeps the reference's window where it divides the level's resolution
(224: all four) and otherwise takes min(4, resolution) (32x32: windows 4, 4, 4, 2; 4 being the
small-dataset Swin's window). The global-query generator halves the map (``FeatExtract`` with
max pooling) until it is one window, or applies one ``FeatExtract`` without pooling where the
level already is one window (the reference's table for 56/28/14/7).

Blocks alternate local window attention (fused qkv) and global attention, whose keys/values come
from a fused kv Dense of the window and whose queries are the level's global tokens, shared by
every window of the image. Two deviations from the public code, which reshapes the channel-last
map as channel-first before the generator and tiles the global query over the batch in the wrong
order: here the generator runs on the map as it is and each window uses its own image's global
query (the paper's description). ``ReduceSize`` (between levels, and in the stem without
widening): LN, x + conv branch, 3x3 stride-2 conv without bias, LN. Conv branch (``ReduceSize``
and ``FeatExtract``): depthwise 3x3 (no bias), GELU, squeeze-excitation (mean, Dense C -> C/4,
GELU, Dense -> C, sigmoid; no biases), 1x1 conv (no bias). Tail: LN, mean over positions, head,
log_softmax in float32. Stochastic depth (0.2) is left out [deviation: deterministic].

Parameters, with C_i = 2^i D at level i, branch(C) = 9C + 2·C·C/4 + C², K classes:
    stem       27D + D (conv) + 2D + branch(D) + 9D² + 2D (ReduceSize, D -> D)
    level i    n_i·branch(C) (global-query generator, n_i FeatExtracts)
               + per block 2C + (2w-1)²·h + (3C² + 3C local | 2C² + 2C global) + C² + C + 2C
                 + 3C² + 3C + 3C² + C
               + ReduceSize to 2C (levels 0-2): 2C + branch(C) + 18C² + 4C
    tail       2·8D + 8D·K + K
CIFAR-100 @32: 11,462,080; ImageWoof @224 (K 10): 11,487,558; at 224 with 1,000 classes
11,995,428, the reference's quoted 12M (tests/test_singd_vits.py counts the reference's layers).

Kronecker capture (``llqr.optim.capture``): the stem conv, the 1x1 and the strided reduction
convs, the squeeze-excitation Dense layers, the local qkv Dense (one layer, as in
``llqr.models.attention``), the global kv Dense (one layer, D -> 2D), proj, fc1, fc2 and the head
are preconditioned; the depthwise convs are grouped Convs, captured as SINGD's grouped Conv2d
(group-averaged patches, an approximation: docs/algorithms.md); LayerNorms and the relative
position bias tables get the plain gradient.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from .attention import FusedSelfAttention, attend
from .swin import RelativePositionBias, window_partition, window_reverse

TRUNC = nn.initializers.truncated_normal(0.02)
REFERENCE_WINDOWS = (7, 7, 14, 7)  # gc_vit_xxtiny's, at 224x224
SMALL_WINDOW = 4
SMALL_STEM_IMAGE = 32  # images up to this side get the stride-2 stem


def gcvit_layout(image: int, levels: int = 4) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """(stem stride, per-level resolutions, per-level windows) for square images of side ``image``."""
    stem = 2 if image <= SMALL_STEM_IMAGE else 4
    if image % (stem * 2 ** (levels - 1)):
        raise ValueError(f"GC-ViT: image side {image} is not divisible by stem {stem} x 2^{levels - 1}")
    res = tuple(image // stem // 2 ** i for i in range(levels))
    ref = REFERENCE_WINDOWS[:levels] + (REFERENCE_WINDOWS[-1],) * (levels - len(REFERENCE_WINDOWS))
    windows = tuple(w if r % w == 0 else min(SMALL_WINDOW, r) for r, w in zip(res, ref))
    for r, w in zip(res, windows):
        q = r // w
        if r % w or q & (q - 1):
            raise ValueError(f"GC-ViT: window {w} does not halve evenly out of resolution {r} (levels {res})")
    return stem, res, windows


class ConvBranch(nn.Module):
    """(B, H, W, C) -> same: depthwise 3x3, GELU, squeeze-excitation, 1x1 conv (no biases)."""

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        y = nn.Conv(c, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=c, use_bias=False, name="dw")(x)
        y = nn.gelu(y, approximate=False)
        s = nn.gelu(nn.Dense(c // 4, use_bias=False, kernel_init=TRUNC, name="se_fc1")(y.mean(axis=(1, 2))),
                    approximate=False)
        s = nn.sigmoid(nn.Dense(c, use_bias=False, kernel_init=TRUNC, name="se_fc2")(s))
        y = y * s[:, None, None, :]
        return nn.Conv(c, (1, 1), use_bias=False, name="pw")(y)


class FeatExtract(nn.Module):
    """x + conv branch(x), then max pool 3/2/1 unless ``keep``: one step of the global-query generator."""

    keep: bool

    @nn.compact
    def __call__(self, x):
        x = x + ConvBranch(name="conv")(x)
        return x if self.keep else nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class ReduceSize(nn.Module):
    """LN, x + conv branch(x), 3x3 stride-2 conv (no bias) to ``out`` channels, LN."""

    out: int

    @nn.compact
    def __call__(self, x):
        x = nn.LayerNorm(epsilon=1e-5, name="norm1")(x)
        x = x + ConvBranch(name="conv")(x)
        x = nn.Conv(self.out, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=False, name="reduction")(x)
        return nn.LayerNorm(epsilon=1e-5, name="norm2")(x)


class GlobalWindowAttention(nn.Module):
    """Windows (B·nW, N, C) attend with keys/values of a fused kv Dense and queries from the image's
    global tokens ``q_global`` (B, N, C), each image's windows using that image's query."""

    heads: int

    @nn.compact
    def __call__(self, x, q_global, bias):
        bn, n, c = x.shape
        hd = c // self.heads
        kv = nn.Dense(2 * c, kernel_init=TRUNC, name="kv")(x).reshape(bn, n, 2, self.heads, hd).transpose(2, 0, 3, 1, 4)
        q = q_global.reshape(q_global.shape[0], n, self.heads, hd).transpose(0, 2, 1, 3)
        q = jnp.repeat(q, bn // q_global.shape[0], axis=0)  # windows are image-major
        return nn.Dense(c, kernel_init=TRUNC, name="proj")(attend(q.astype(kv.dtype), kv[0], kv[1], bias))


class GCViTBlock(nn.Module):
    """(B, H, W, C) -> same: x + (local | global) window attention(LN(x)); x + MLP(LN(x))."""

    heads: int
    window: int
    use_global: bool
    mlp_ratio: int = 3

    @nn.compact
    def __call__(self, x, q_global):
        b, h, w, c = x.shape
        y = window_partition(nn.LayerNorm(epsilon=1e-5, name="norm1")(x), self.window)
        bias = RelativePositionBias(self.window, self.heads, name="rel_pos")()[None]
        if self.use_global:
            y = GlobalWindowAttention(self.heads, name="attn")(y, q_global, bias)
        else:
            y = FusedSelfAttention(self.heads, qkv_bias=True, kernel_init=TRUNC, name="attn")(y, bias)
        x = x + window_reverse(y, self.window, h, w)
        m = nn.Dense(c * self.mlp_ratio, kernel_init=TRUNC, name="fc1")(nn.LayerNorm(epsilon=1e-5, name="norm2")(x))
        return x + nn.Dense(c, kernel_init=TRUNC, name="fc2")(nn.gelu(m, approximate=False))


class GCViT(nn.Module):
    """GC-ViT with the XXT defaults; stem stride and windows follow the input size (``gcvit_layout``)."""

    num_classes: int = 100
    dim: int = 64
    depths: tuple[int, ...] = (2, 2, 6, 2)
    heads: tuple[int, ...] = (2, 4, 8, 16)
    mlp_ratio: int = 3

    @nn.compact
    def __call__(self, x, train: bool = False):
        if x.shape[1] != x.shape[2]:
            raise ValueError(f"GC-ViT: square images only, got {x.shape[1]}x{x.shape[2]}")
        stem, res, windows = gcvit_layout(x.shape[1], len(self.depths))
        s = stem // 2
        h = nn.Conv(self.dim, (3, 3), strides=(s, s), padding=((1, 1), (1, 1)), name="stem")(x)
        h = ReduceSize(self.dim, name="stem_reduce")(h)
        last = len(self.depths) - 1
        for i, (depth, heads, r, window) in enumerate(zip(self.depths, self.heads, res, windows)):
            q = h
            steps = max(1, (r // window).bit_length() - 1)
            for j in range(steps):
                q = FeatExtract(keep=r == window, name=f"level{i}_global{j}")(q)
            q = q.reshape(q.shape[0], -1, q.shape[-1])  # (B, window², C) global query tokens
            for k in range(depth):
                h = GCViTBlock(heads, window, k % 2 == 1, self.mlp_ratio, name=f"level{i}_block{k}")(h, q)
            if i < last:
                h = ReduceSize(2 * h.shape[-1], name=f"level{i}_reduce")(h)
        h = nn.LayerNorm(epsilon=1e-5, name="norm")(h).mean(axis=(1, 2))
        logits = nn.Dense(self.num_classes, kernel_init=TRUNC, name="head")(h)
        return nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)))
