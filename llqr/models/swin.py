"""Swin Transformer (Liu et al. 2021, "Hierarchical Vision Transformer using Shifted Windows"), the
SINGD study's Swin-ViT, in the small-dataset layout.

Configuration [U]: the SINGD appendix's own Swin variant was not retrieved. We use the small-dataset
Swin of Lee et al. 2021 ("Vision Transformer for Small-Size Datasets", aanna0701/SPT_LSA_ViT
``models/create_model.py``, the Swin most CIFAR ViT work reuses): embedding 96, three stages of
depths (2, 6, 4) with (3, 6, 12) heads, MLP ratio 2, q/k/v bias, window 4, patch 2 on 32x32
images (4 otherwise), a learnable absolute position table, Swin's patch merging between stages.

Layout from the input (``swin_layout``): patch 2 for images of at most 32 px (the reference's
CIFAR rule), else 4; the window is the first of (4, 7) that divides every stage's resolution
larger than it (32x32: stages 16, 8, 4 with window 4; 224x224 for ImageWoof: 56, 28, 14 where 4
does not divide 14, so Swin-T's ImageNet window 7 [U]). A stage no larger than the window attends
over the whole map without shifting (the reference's rule).

Per block: x + W-MSA(LN(x)); x + fc2(gelu(fc1(LN(x)))); odd blocks shift the map by window/2
(cyclic roll) and mask the attention between regions that the roll made neighbours (-100 on the
logits, as the reference). Attention logits get a learned relative position bias ((2w-1)² x heads
table per block). Patch merging: the 2x2 neighbours concatenated (4C) -> LN -> Dense(4C -> 2C, no
bias). Tail: LN, mean over tokens, Dense head, log_softmax in float32. The reference's stochastic
depth (0.1) is left out [deviation: deterministic].

Parameters, with D embedding, C_s = 2^s D, r = MLP ratio, h_s heads, w_s the stage window, p the
patch, T = (H/p)² tokens, K classes:
    stem       p²·3·D + D (conv) + 2D (LN) + T·D (positions)
    block      2C + (2w-1)²·h + 3C² + 3C (qkv) + C² + C (proj) + 2C + C·rC + rC + rC·C + C
    merge      8C (LN over 4C) + 4C·2C
    tail       2C_2 + C_2·K + K
CIFAR-100 @32 (p 2, w 4): 7,107,838; ImageWoof @224 (K 10, p 4, w 7): 7,363,924
(tests/test_singd_vits.py counts the reference's layer list).

Kronecker capture (``llqr.optim.capture``): the patch-embedding conv (a plain strided Conv), each
block's fused qkv Dense (one layer, ``llqr.models.attention``; the relative position bias and
the shift mask are added to the logits between qkv and proj, so they change neither layer's
factors), proj, fc1, fc2, patch merging's reduction Dense and the head are preconditioned;
LayerNorms, the absolute position table and the relative position bias tables get the plain
gradient.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from .attention import FusedSelfAttention

TRUNC = nn.initializers.truncated_normal(0.02)
SMALL_PATCH_IMAGE = 32  # images up to this side get patch 2 (the reference's CIFAR rule), others 4
WINDOWS = (4, 7)  # the small-dataset window, then Swin-T's ImageNet window
MASKED = -100.0  # the reference's logit for token pairs that the cyclic shift made adjacent


def swin_layout(image: int, stages: int) -> tuple[int, tuple[int, ...]]:
    """(patch, per-stage windows) for square images of side ``image``; see the module docstring."""
    patch = 2 if image <= SMALL_PATCH_IMAGE else 4
    res = [image // patch // 2 ** s for s in range(stages)]
    if image % (patch * 2 ** (stages - 1)):
        raise ValueError(f"Swin: image side {image} is not divisible by patch {patch} x 2^{stages - 1} merges")
    for w in WINDOWS:
        if all(r <= w or r % w == 0 for r in res):
            return patch, tuple(min(w, r) for r in res)
    raise ValueError(f"Swin: no window of {WINDOWS} divides the stage resolutions {res}")


def relative_position_index(window: int) -> np.ndarray:
    """(w², w²) index into the (2w-1)² bias table of each token pair's (dy, dx) offset (the
    reference's ``relative_position_index``)."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)
    return rel[0] * (2 * window - 1) + rel[1]


def window_partition(x, window: int):
    """(B, H, W, C) -> (B·nW, w², C), windows in row-major order within each image."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def window_reverse(windows, window: int, h: int, w: int):
    """Inverse of ``window_partition``: (B·nW, w², C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.reshape(-1, h // window, w // window, window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def shift_mask(res: int, window: int, shift: int) -> np.ndarray:
    """(nW, w², w²) logit mask of the shifted windows: 0 within a region of the rolled map, MASKED
    between regions (the reference's ``attn_mask``)."""
    region = np.zeros((1, res, res, 1))
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for i, hs in enumerate(cuts):
        for j, ws in enumerate(cuts):
            region[:, hs, ws, :] = 3 * i + j
    ids = np.asarray(window_partition(region, window))[..., 0]  # (nW, w²)
    return np.where(ids[:, None, :] != ids[:, :, None], MASKED, 0.0).astype(np.float32)


class RelativePositionBias(nn.Module):
    """The (heads, w², w²) logit bias from a learned (2w-1)² x heads table (plain gradient)."""

    window: int
    heads: int

    @nn.compact
    def __call__(self):
        w = self.window
        table = self.param("relative_position_bias_table", TRUNC, ((2 * w - 1) ** 2, self.heads))
        return table[relative_position_index(w).reshape(-1)].reshape(w * w, w * w, self.heads).transpose(2, 0, 1)


class SwinBlock(nn.Module):
    """(B, H, W, C) -> (B, H, W, C): (shifted) window attention and MLP, both pre-norm residual."""

    heads: int
    window: int
    shift: int = 0
    mlp_ratio: int = 2

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        y = nn.LayerNorm(epsilon=1e-5, name="norm1")(x)
        if self.shift:
            y = jnp.roll(y, (-self.shift, -self.shift), axis=(1, 2))
        bias = RelativePositionBias(self.window, self.heads, name="rel_pos")()[None]  # (1, heads, N, N)
        if self.shift:
            bias = bias + jnp.asarray(shift_mask(h, self.window, self.shift))[:, None]  # (nW, heads, N, N)
            bias = jnp.tile(bias, (b, 1, 1, 1))  # windows are image-major: (B·nW, heads, N, N)
        y = FusedSelfAttention(self.heads, qkv_bias=True, kernel_init=TRUNC, name="attn")(
            window_partition(y, self.window), bias)
        y = window_reverse(y, self.window, h, w)
        if self.shift:
            y = jnp.roll(y, (self.shift, self.shift), axis=(1, 2))
        x = x + y
        m = nn.Dense(c * self.mlp_ratio, kernel_init=TRUNC, name="fc1")(nn.LayerNorm(epsilon=1e-5, name="norm2")(x))
        return x + nn.Dense(c, kernel_init=TRUNC, name="fc2")(nn.gelu(m, approximate=False))


class PatchMerging(nn.Module):
    """(B, H, W, C) -> (B, H/2, W/2, 2C): 2x2 neighbours concatenated in the reference's order
    (x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]), LN, Dense without bias."""

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
        x = nn.LayerNorm(epsilon=1e-5, name="norm")(x)
        return nn.Dense(2 * c, use_bias=False, kernel_init=TRUNC, name="reduction")(x)


class Swin(nn.Module):
    """Swin with the small-dataset defaults (D 96, depths (2, 6, 4), heads (3, 6, 12), MLP ratio 2);
    patch and windows follow the input size (``swin_layout``)."""

    num_classes: int = 100
    dim: int = 96
    depths: tuple[int, ...] = (2, 6, 4)
    heads: tuple[int, ...] = (3, 6, 12)
    mlp_ratio: int = 2

    @nn.compact
    def __call__(self, x, train: bool = False):
        if x.shape[1] != x.shape[2]:
            raise ValueError(f"Swin: square images only, got {x.shape[1]}x{x.shape[2]}")
        patch, windows = swin_layout(x.shape[1], len(self.depths))
        h = nn.Conv(self.dim, (patch, patch), strides=(patch, patch), padding="VALID", name="patch_embed")(x)
        h = nn.LayerNorm(epsilon=1e-5, name="patch_norm")(h)
        b, r, _, d = h.shape
        pos = self.param("absolute_pos_embed", TRUNC, (1, r * r, d))
        h = h + pos.reshape(1, r, r, d).astype(h.dtype)
        for s, (depth, heads, window) in enumerate(zip(self.depths, self.heads, windows)):
            for i in range(depth):
                shift = window // 2 if i % 2 and h.shape[1] > window else 0
                h = SwinBlock(heads, window, shift, self.mlp_ratio, name=f"stage{s}_block{i}")(h)
            if s < len(self.depths) - 1:
                h = PatchMerging(name=f"stage{s}_merge")(h)
        h = nn.LayerNorm(epsilon=1e-5, name="norm")(h).reshape(b, -1, h.shape[-1]).mean(axis=1)
        logits = nn.Dense(self.num_classes, kernel_init=TRUNC, name="head")(h)
        return nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)))
