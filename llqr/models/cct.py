"""Compact Convolutional Transformer (Hassani et al. 2021, "Escaping the Big Data Paradigm with
Compact Transformers"), the SINGD study's Compact-ViT.

Configuration: CCT-7/3x1 (SHI-Labs/Compact-Transformers ``cct_7_3x1_32_c100``, the reference's
CIFAR-100 model): 7 layers, 4 heads, embedding 256, MLP ratio 2, one 3x3 tokenizer conv (stride 1,
padding 1, no bias) -> ReLU -> max pool 3/2/1, learnable positions, sequence pooling. The SINGD
appendix's own statement of the variant was [not retrieved]: we use the reference's CIFAR model.

Layout: tokens = flatten(maxpool(relu(conv(x)))) (H/2 · W/2 tokens of D); + positions (N(0, 0.2)
truncated, like the reference's); per layer [x + attn(LN(x)); x = LN(x); x + fc2(gelu(fc1(x)))]
(the reference's post-attention ``norm1``); final LN; sequence pooling: softmax over tokens of a
Dense(D -> 1) weights the tokens; Dense head; log_softmax in float32. The reference's dropouts
(attention 0.1, stochastic depth 0.1) are left out [deviation: deterministic].

Parameters, with D embedding, M = 2D, T = (H/2)(W/2) tokens, K classes:
    tokenizer  9·3·D;  positions T·D
    layer      2D (LN) + 3D² (qkv, no bias) + D² + D (proj) + 2D (LN) + D·M + M + M·D + D
    tail       2D (LN) + D + 1 (pool) + D·K + K
CIFAR-100 (D 256, T 256): 6,912 + 65,536 + 7 · 526,336 + 769 + 25,700 = 3,783,269 (K 10:
3,760,139, the reference's quoted 3.76M). T grows with the image: the count at another image size
differs by (T' - 256)·D.

Kronecker capture: the tokenizer conv (a plain Conv, no bias), the fused qkv Dense (one layer:
``llqr.models.attention``), proj, fc1, fc2, the pooling Dense and the head are preconditioned;
LayerNorms and the position table get the plain gradient.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from .attention import FusedSelfAttention

TRUNC = nn.initializers.truncated_normal(0.02)


class CCT(nn.Module):
    """CCT-``layers``/3x1 (defaults: the study's 7 layers, 4 heads, D 256, MLP ratio 2)."""

    num_classes: int = 100
    dim: int = 256
    layers: int = 7
    heads: int = 4
    mlp_ratio: int = 2

    @nn.compact
    def __call__(self, x, train: bool = False):
        d = self.dim
        h = nn.Conv(d, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                    kernel_init=nn.initializers.he_normal(), name="tokenizer")(x)
        h = nn.max_pool(nn.relu(h), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        b = h.shape[0]
        h = h.reshape(b, -1, d)
        pos = self.param("pos_embedding", nn.initializers.truncated_normal(0.2), (1, h.shape[1], d))
        h = h + pos.astype(h.dtype)
        for i in range(self.layers):
            h = h + FusedSelfAttention(self.heads, kernel_init=TRUNC, name=f"layer{i}_attn")(
                nn.LayerNorm(epsilon=1e-5, name=f"layer{i}_pre_norm")(h))
            h = nn.LayerNorm(epsilon=1e-5, name=f"layer{i}_norm1")(h)
            m = nn.Dense(d * self.mlp_ratio, kernel_init=TRUNC, name=f"layer{i}_fc1")(h)
            h = h + nn.Dense(d, kernel_init=TRUNC, name=f"layer{i}_fc2")(nn.gelu(m, approximate=False))
        h = nn.LayerNorm(epsilon=1e-5, name="norm")(h)
        w = nn.softmax(nn.Dense(1, kernel_init=TRUNC, name="attention_pool")(h).astype(jnp.float32), axis=1)
        h = jnp.einsum("bn,bnd->bd", w[..., 0].astype(h.dtype), h)
        logits = nn.Dense(self.num_classes, kernel_init=TRUNC, name="head")(h)
        return nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)))
