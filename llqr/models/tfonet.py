"""The HyperbolicLR study's TFONet (Kim 2024): a transformer encoder-decoder operator network.

Input x (N, 2, Q) as for DeepONet: row 0 the sensor values u, row 1 the query points y. The
"branch" encoder reads u as a sequence of scalars, the "trunk" decoder reads y as one and attends
to the encoded u; one output per query point, (N, Q) in float32. The study's layer list
(``TFEncoder``, ``TFDecoder``, PyTorch's post-LN ``TransformerEncoderLayer`` /
``TransformerDecoderLayer``, ReLU feed-forward, dropout 0, no masks, no final norm):

    encoder: Linear(1, d) · √d + PE -> layers × [x = LN(x + SelfAttn(x)); x = LN(x + FF(x))]
    decoder: Linear(1, d) · √d + PE -> layers × [x = LN(x + SelfAttn(x)); x = LN(x + CrossAttn(x, mem));
                                                 x = LN(x + FF(x))] -> Linear(d, 1)

FF = Linear(d, f) -> ReLU -> Linear(f, d); PE the sinusoidal table (sin on even, cos on odd
features); LayerNorm eps 1e-5; the study's defaults d 128, 2 heads, f 512, 3 layers. Inits are
PyTorch's: Linear U(±1/√fan_in); the attention's packed q, k, v projection Xavier-uniform over
(3d, d) with zero bias, its output projection U(±1/√d) with zero bias. ``nn.TransformerEncoder``
deep-copies one layer, so the layers of a stack start identical: here each stack is one scanned
layer whose parameters have a leading axis of ``layers``, all initialised from one key.

Parameters: encoder layer 4(d² + d) + 2df + f + d + 4d, decoder layer 8(d² + d) + 2df + f + d +
6d, embeddings 2 · 2d, output d + 1. At the study's sizes: 3 · 198,272 + 3 · 264,576 + 512 + 129
= 1,389,185. (The study's module also keeps the template layers it copied, ``encoder_layer`` and
``decoder_layer``, unused: PyTorch's ``parameters()`` counts 1,852,033.)
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from .deeponet import torch_dense, torch_uniform

LN_EPS = 1e-5  # PyTorch's LayerNorm


def positional_encoding(length: int, d: int) -> np.ndarray:
    """(length, d): sin(pos · ω_i) at feature 2i, cos at 2i + 1, ω_i = 10000^(−2i/d)."""
    position = np.arange(length, dtype=np.float64)[:, None]
    omega = np.exp(np.arange(0, d, 2) * (-math.log(10000.0) / d))
    table = np.zeros((length, d))
    table[:, 0::2] = np.sin(position * omega)
    table[:, 1::2] = np.cos(position * omega)[:, : d // 2]
    return table.astype(np.float32)


class Attention(nn.Module):
    """PyTorch's nn.MultiheadAttention (batch first, no mask, no dropout) with its initialisation."""

    heads: int

    @nn.compact
    def __call__(self, query, memory):
        d = query.shape[-1]
        return nn.MultiHeadDotProductAttention(
            num_heads=self.heads, qkv_features=d, out_features=d, deterministic=True,
            kernel_init=torch_uniform(math.sqrt(6.0 / (4 * d))), bias_init=nn.initializers.zeros,
            out_kernel_init=torch_uniform(1.0 / math.sqrt(d)), out_bias_init=nn.initializers.zeros,
            name="attn")(query, memory)


class FeedForward(nn.Module):
    hidden: int

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        x = nn.relu(torch_dense(self.hidden, d, name="linear1")(x))
        return torch_dense(d, self.hidden, name="linear2")(x)


def norm(name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=LN_EPS, name=name)


class EncoderLayer(nn.Module):
    heads: int
    ff: int

    @nn.compact
    def __call__(self, x, _):
        x = norm("norm1")(x + Attention(self.heads, name="self_attn")(x, x))
        return norm("norm2")(x + FeedForward(self.ff, name="ff")(x)), None


class DecoderLayer(nn.Module):
    heads: int
    ff: int

    @nn.compact
    def __call__(self, x, memory):
        x = norm("norm1")(x + Attention(self.heads, name="self_attn")(x, x))
        x = norm("norm2")(x + Attention(self.heads, name="cross_attn")(x, memory))
        return norm("norm3")(x + FeedForward(self.ff, name="ff")(x)), None


def stack(layer, layers: int, name: str, **kwargs):
    """``layers`` copies of ``layer`` applied in turn, identically initialised (one params key)."""
    scanned = nn.scan(layer, variable_axes={"params": 0}, split_rngs={"params": False}, in_axes=nn.broadcast,
                      length=layers)
    return scanned(name=name, **kwargs)


class TFONet(nn.Module):
    d_model: int = 128
    heads: int = 2
    ff: int = 512
    layers: int = 3

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by heads {self.heads}")
        x = jnp.asarray(x, jnp.float32)
        u, y = x[:, 0, :, None], x[:, 1, :, None]
        d, scale = self.d_model, math.sqrt(self.d_model)

        def embed(seq, name):
            table = jnp.asarray(positional_encoding(seq.shape[1], d))
            return torch_dense(d, 1, name=name)(seq) * scale + table[None]

        memory, _ = stack(EncoderLayer, self.layers, "encoder", heads=self.heads, ff=self.ff)(
            embed(u, "branch_embedding"), None)
        out, _ = stack(DecoderLayer, self.layers, "decoder", heads=self.heads, ff=self.ff)(
            embed(y, "trunk_embedding"), memory)
        return torch_dense(1, d, name="fc")(out)[..., 0]
