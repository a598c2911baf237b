"""The grokking experiments' small causal transformer (the LLQR code's ``grok-transformer``).

Input: (N, 4) token ids ``[a, op, b, =]`` (floats are accepted and cast, so the runner's float
sample input initialises it); output: (N, K) log-probabilities over the K residues.

Three top-level groups, the reference's three controlled layers (``layers_i`` of its sequential
container): ``layers_0`` = token embedding (scaled by sqrt(dim)) + learned positions + the first
pre-LN block; ``layers_1`` = the second block; ``layers_2`` = the head: the whole sequence
flattened, a LayerNorm, a Dense to K. Blocks are x + Attn(LN(x)), then x + MLP(LN(x)) with a
causal mask, LayerNorms with a scale and no bias, q/k/v projections without bias
(``query``/``key``/``value``, (dim, heads, head_dim) kernels), an ``out`` projection with bias and
an MLP dim -> mlp_dim -> dim with tanh-GELU. No dropout (``train`` only keeps the signature).

Parameters, with V = vocab, D = dim, A = heads * head_dim, M = mlp_dim, L = 4 tokens, P = 5
position slots (the reference's max_length):
    embeddings    V*D + P*D
    block         2D (LN scales) + 3*D*A (q, k, v) + A*D + D (out) + D*M + M + M*D + D
    head          L*D (LN scale) + L*D*K + K
For the reference sizes (D 128, 4 heads of 32, M 512, depth 2) on p = 97 (V = 99, K = 97):
13,312 + 2 * 197,632 + 50,273 = 458,849.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

SEQ_LEN = 4  # a, op, b, =
MAX_LENGTH = 5  # position-table rows, as the reference (one is never used)
LN_EPS = 1e-5


def _norm():
    return nn.LayerNorm(epsilon=LN_EPS, use_bias=False)


class CausalSelfAttention(nn.Module):
    heads: int
    head_dim: int

    @nn.compact
    def __call__(self, x):
        proj = dict(features=(self.heads, self.head_dim), use_bias=False)
        q = nn.DenseGeneral(**proj, name="query")(x)
        k = nn.DenseGeneral(**proj, name="key")(x)
        v = nn.DenseGeneral(**proj, name="value")(x)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * self.head_dim ** -0.5
        n = x.shape[1]
        scores = jnp.where(jnp.tril(jnp.ones((n, n), bool)), scores, -1e30)
        weights = nn.softmax(scores, axis=-1)
        return nn.DenseGeneral(x.shape[-1], axis=(-2, -1), name="out")(jnp.einsum("bhqk,bkhd->bqhd", weights, v))


class Block(nn.Module):
    """Pre-LN causal block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    heads: int
    head_dim: int
    mlp_dim: int

    @nn.compact
    def __call__(self, x):
        x = x + CausalSelfAttention(self.heads, self.head_dim, name="attn")(_norm()(x))
        y = nn.Dense(self.mlp_dim, name="fc1")(_norm()(x))
        return x + nn.Dense(x.shape[-1], name="fc2")(nn.gelu(y))


class EmbedBlock(nn.Module):
    """Token + position embedding, then the first block (one controlled layer in the reference)."""

    vocab: int
    dim: int
    heads: int
    head_dim: int
    mlp_dim: int

    @nn.compact
    def __call__(self, tokens):
        emb = nn.Embed(self.vocab, self.dim, name="embed")(tokens)
        pos = self.param("pos_embedding", nn.initializers.normal(1.0), (MAX_LENGTH, self.dim))
        x = emb * jnp.sqrt(float(self.dim)) + pos[None, : tokens.shape[1]]
        return Block(self.heads, self.head_dim, self.mlp_dim, name="block")(x)


class Head(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x):
        x = _norm()(jnp.reshape(x, (x.shape[0], -1)))
        return nn.log_softmax(nn.Dense(self.num_classes)(x).astype(jnp.float32))


class GrokTransformer(nn.Module):
    num_classes: int = 97
    vocab: int = 99  # the residues plus the op and = tokens
    dim: int = 128
    depth: int = 2
    heads: int = 4
    head_dim: int = 32
    mlp_dim: int = 512

    def setup(self):
        block = dict(heads=self.heads, head_dim=self.head_dim, mlp_dim=self.mlp_dim)
        self.layers = [EmbedBlock(self.vocab, self.dim, **block),
                       *[Block(**block) for _ in range(self.depth - 1)],
                       Head(self.num_classes)]

    def __call__(self, x, train: bool = False):
        x = jnp.asarray(x).astype(jnp.int32)
        if x.ndim != 2 or x.shape[1] != SEQ_LEN:
            raise ValueError(f"expected (N, {SEQ_LEN}) token ids, got shape {x.shape}")
        for layer in self.layers:
            x = layer(x)
        return x
