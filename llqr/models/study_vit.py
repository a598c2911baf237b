"""The HyperbolicLR study's CIFAR-10 vision transformer (ours): a "simple ViT" (Beyer, Zhai &
Kolesnikov 2022, "Better plain ViT baselines for ImageNet-1k").

``SimpleViT``: non-overlapping ``patch`` x ``patch`` patches, each flattened (row, column, channel
order) and embedded by one Dense to ``dim`` (``patch_embed``); plus a fixed 2-D sin-cos position
embedding (``posemb_sincos_2d``, a constant: not a parameter, no class token); ``depth`` pre-LN
blocks ``block_i`` = [x + MHSA(LN(x)); x + MLP(LN(x))] with ``heads`` heads (q, k, v and output
projections with bias) and an MLP Dense ``mlp_dim`` -> GELU (exact erf form) -> Dense ``dim``; a
final LayerNorm, the mean over tokens, a Dense head to K, log_softmax in float32. No dropout
(``train`` only keeps the models' common signature), so ``init`` returns ``params`` only.
Initialisation: Xavier-uniform kernels and zero biases, LayerNorms scale 1 and bias 0, and a
zero head (big_vision's ``head_zeroinit``: the initial output is uniform, log K, and only the head
gets a gradient on the first step).

Parameters, with P = patch² · C (48 for 4x4 RGB patches), D = dim, M = mlp_dim:
    patch_embed   P·D + D
    block         2·2D (LNs) + 4·(D² + D) (q, k, v, out) + (D·M + M) + (M·D + D)
    final LN      2D;  head  D·K + K
For the defaults (32x32x3, patch 4, D 192, depth 6, heads 3, M 384, K 10): 9,408 + 6 · 297,024 +
384 + 1,930 = 1,793,866. (The study's own runs use ``vit_pytorch.SimpleViT`` with searched sizes;
this default size is ours.)
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

KERNEL_INIT = nn.initializers.xavier_uniform()


def posemb_sincos_2d(h: int, w: int, dim: int, temperature: float = 10_000.0) -> np.ndarray:
    """(h·w, dim) fixed position embedding of an h x w token grid (row-major, as the patches):
    [sin(x·ω), cos(x·ω), sin(y·ω), cos(y·ω)] with ω_i = temperature^(-i / (dim/4 - 1))."""
    if dim % 4 or dim < 8:
        raise ValueError(f"the 2-D sin-cos position embedding needs dim a multiple of 4 and >= 8, not {dim}")
    y, x = np.mgrid[:h, :w]
    omega = 1.0 / temperature ** (np.arange(dim // 4) / (dim // 4 - 1))
    y = y.reshape(-1)[:, None] * omega[None, :]
    x = x.reshape(-1)[:, None] * omega[None, :]
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1).astype(np.float32)


def patchify(x, patch: int):
    """(N, H, W, C) -> (N, H/p · W/p, p·p·C): non-overlapping patches, row-major over the grid."""
    n, h, w, c = x.shape
    if h % patch or w % patch:
        raise ValueError(f"image {h}x{w} is not divisible into {patch}x{patch} patches")
    x = jnp.reshape(x, (n, h // patch, patch, w // patch, patch, c))
    x = jnp.transpose(x, (0, 1, 3, 2, 4, 5))
    return jnp.reshape(x, (n, (h // patch) * (w // patch), patch * patch * c))


class Block(nn.Module):
    """Pre-LN transformer encoder block: x + MHSA(LN(x)), then x + MLP(LN(x))."""

    heads: int
    mlp_dim: int

    @nn.compact
    def __call__(self, x):
        dim = x.shape[-1]
        y = nn.LayerNorm(name="ln_attn")(x)
        y = nn.MultiHeadDotProductAttention(num_heads=self.heads, qkv_features=dim, out_features=dim,
                                            kernel_init=KERNEL_INIT, deterministic=True, name="attn")(y)
        x = x + y
        y = nn.LayerNorm(name="ln_mlp")(x)
        y = nn.Dense(self.mlp_dim, kernel_init=KERNEL_INIT, name="mlp_in")(y)
        y = nn.Dense(dim, kernel_init=KERNEL_INIT, name="mlp_out")(nn.gelu(y, approximate=False))
        return x + y


class SimpleViT(nn.Module):
    num_classes: int = 10
    patch: int = 4
    dim: int = 192
    depth: int = 6
    heads: int = 3
    mlp_dim: int = 384

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        x = jnp.asarray(x, jnp.float32)
        grid_h, grid_w = x.shape[1] // self.patch, x.shape[2] // self.patch
        tokens = nn.Dense(self.dim, kernel_init=KERNEL_INIT, name="patch_embed")(patchify(x, self.patch))
        tokens = tokens + jnp.asarray(posemb_sincos_2d(grid_h, grid_w, self.dim))[None]
        for i in range(self.depth):
            tokens = Block(heads=self.heads, mlp_dim=self.mlp_dim, name=f"block_{i}")(tokens)
        pooled = jnp.mean(nn.LayerNorm(name="ln_final")(tokens), axis=1)
        logits = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name="head")(pooled)
        return nn.log_softmax(logits.astype(jnp.float32))
