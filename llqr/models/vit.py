"""ViT-Ti/16 (the LLQR code's ``vit-ti-16``) as a flat list of stages (``llqr.models.stages``).

Width 192, depth 12, 3 heads, MLP 768; patches 4x4 for 10 or 100 classes (CIFAR: 8x8 = 64
patches), 16x16 for 1000 (ImageNet), as the reference picks them. A class token is prepended and
read out after the final LayerNorm. Dropout 0.1 on the embeddings, the residual branches, the MLP
hidden layer and (``attention_dropout_rate``) the attention weights, active only when training.

The stage list mirrors the reference's, so the controlled layers (top-level ``layers_i`` groups)
are the same and have the same indices: the patch Conv (0), the class token (2), the position
embedding (3); per block, starting at 5 + 9b: pre-attention LayerNorm, attention (q, k, v, out
together: Flax's ``MultiHeadDotProductAttention`` with (192, 3, 64) ``query``/``key``/``value``
kernels), pre-MLP LayerNorm, fc1, fc2; the final LayerNorm (113) and the head (116). The passive
stages in between (flatten, dropouts, residual adds, GELU, read-out, log_softmax) own nothing.

Parameters, with P = patch²·3, D = 192, M = 768, T = patches + 1 tokens, K classes:
    stem   P·D + D (conv) + D (class token) + T·D (positions)
    block  2·2D (LNs) + 3·(D² + D) (q, k, v) + D² + D (out) + D·M + M + M·D + D
    head   2D (LN) + D·K + K
CIFAR-100 (P 48, T 65): 22,080 + 12 · 444,864 + 19,684 = 5,380,132 (CIFAR-10: 5,362,762).
Initialisation as the reference: Xavier-uniform attention and MLP kernels, N(0, 1e-6) MLP biases,
N(0, 0.02) positions, a zero class token and a zero head kernel.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from .stages import Builder, Dropout, LogSoftmax, Stage, StageNet

XAVIER = nn.initializers.xavier_uniform()
MLP_BIAS = nn.initializers.normal(stddev=1e-6)
POS_INIT = nn.initializers.normal(stddev=0.02)


class PatchFlatten(Stage):
    def op(self, x, train):
        n, h, w, c = x.shape
        return jnp.reshape(x, (n, h * w, c))


class ClassToken(Stage):
    """Prepends a learned token (initialised to zero) to the sequence."""

    def op(self, x, train):
        cls = self.param("cls", nn.initializers.zeros, (1, 1, x.shape[-1]))
        return jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, x.shape[-1])).astype(x.dtype), x], axis=1)


class PositionEmbedding(Stage):
    def op(self, x, train):
        return x + self.param("pos_embedding", POS_INIT, (1, *x.shape[1:]))


class LayerNorm(Stage):
    def op(self, x, train):
        return nn.LayerNorm()(x)


class SelfAttention(Stage):
    heads: int = 3
    dropout_rate: float = 0.0

    def op(self, x, train):
        return nn.MultiHeadDotProductAttention(num_heads=self.heads, dropout_rate=self.dropout_rate,
                                               broadcast_dropout=False, deterministic=not train,
                                               kernel_init=XAVIER)(x, x)


class MlpDense(Stage):
    features: int = 0

    def op(self, x, train):
        return nn.Dense(self.features, kernel_init=XAVIER, bias_init=MLP_BIAS)(x)


class Gelu(Stage):
    def op(self, x, train):
        return nn.gelu(x)


class ResidualAdd(Stage):
    """Pair in, ``skip + dropout(main)`` out: the end of an attention or MLP branch."""

    rate: float = 0.0

    @nn.compact
    def __call__(self, state, train: bool = False):
        main, skip = state
        if self.rate:
            main = nn.Dropout(self.rate, deterministic=not train)(main)
        return skip + main


class ClassReadout(Stage):
    def op(self, x, train):
        return x[:, 0]


class Identity(Stage):
    """The reference's empty ``pre_logits`` stage, kept so that the head's index matches."""

    def op(self, x, train):
        return x


class Head(Stage):
    features: int = 0

    def op(self, x, train):
        return nn.Dense(self.features, kernel_init=nn.initializers.zeros)(x)


CONTROLLED = (ClassToken, PositionEmbedding, LayerNorm, SelfAttention, MlpDense, Head)


class ViT(StageNet):
    num_classes: int = 100
    patch: int = 4
    dim: int = 192
    depth: int = 12
    heads: int = 3
    mlp_dim: int = 768
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1

    @nn.nowrap
    def stages(self):
        b, rate = Builder(), self.dropout_rate
        b.conv("patch_embed", self.dim, self.patch, self.patch, padding="VALID", use_bias=True)
        b.add(PatchFlatten())
        b.add(ClassToken(tag="cls_token"))
        b.add(PositionEmbedding(tag="pos_embed"))
        b.add(Dropout(rate=rate))
        for i in range(self.depth):
            b.add(LayerNorm(route="fork", tag=f"block_{i}_attn_ln"))
            b.add(SelfAttention(route="main", tag=f"block_{i}_attn", heads=self.heads,
                                dropout_rate=self.attention_dropout_rate))
            b.add(ResidualAdd(rate=rate))
            b.add(LayerNorm(route="fork", tag=f"block_{i}_mlp_ln"))
            b.add(MlpDense(route="main", tag=f"block_{i}_fc1", features=self.mlp_dim))
            b.add(Gelu(route="main"))
            b.add(Dropout(route="main", rate=rate))
            b.add(MlpDense(route="main", tag=f"block_{i}_fc2", features=self.dim))
            b.add(ResidualAdd(rate=rate))
        b.add(LayerNorm(tag="encoder_norm"))
        b.add(ClassReadout())
        b.add(Identity())
        b.add(Head(tag="logits", features=self.num_classes))
        b.add(LogSoftmax())
        return b.items


def controlled_tags(model: ViT) -> dict[str, str]:
    """``{"layers_i": tag}`` for the stages that own parameters (the patch Conv included), in order."""
    return {f"layers_{i}": stage.tag for i, stage in enumerate(model.stages())
            if isinstance(stage, CONTROLLED) or stage.tag == "patch_embed"}
