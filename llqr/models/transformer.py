"""The IWSLT'14 de-en Transformer (fairseq ``transformer_iwslt_de_en``), post-LN, in Flax linen.

Token ids follow fairseq's dictionary: bos 0, pad 1, eos 2, unk 3. Sources are left-padded, the
decoder input (``prev``) is right-padded and starts with eos. Outputs are float32 log-probabilities.

Attention is written out (rather than ``nn.MultiHeadDotProductAttention``) so that cross-attention
keys/values can be projected once per source and the decoder self-attention cache can be passed
around as plain arrays, which beam search reorders by gathering beams. The q/k/v projections keep
the leaf names ``query``/``key``/``value`` with (emb, heads, head_dim) kernels, the names the LLQR
preconditioner (``llqr.optim.structures``) treats as (emb, heads*head_dim) matrices.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

BOS, PAD, EOS, UNK = 0, 1, 2, 3
LN_EPS = 1e-5
_MASKED = -1e9  # finite, so a fully masked row softmaxes to uniform instead of NaN

# xavier_uniform on the flat (in, out) view: DenseGeneral hands kernel_init the flattened shape,
# so fan_in = emb and fan_out = heads*head_dim for the (emb, heads, head_dim) q/k/v kernels.
_xavier = nn.initializers.xavier_uniform()
_qkv_init = nn.initializers.variance_scaling(0.5, "fan_avg", "uniform")  # xavier, gain 1/sqrt(2)


def embed_init(pad_id: int, std: float):
    """normal(std) with the pad row zeroed (fairseq's Embedding(padding_idx=...) init)."""

    def init(key, shape, dtype=jnp.float32):
        w = std * jax.random.normal(key, shape, dtype)
        return w.at[pad_id].set(0.0)

    return init


def sinusoid_table(num: int, dim: int, pad_id: int) -> np.ndarray:
    """fairseq's SinusoidalPositionalEmbedding table (num, dim), row ``pad_id`` zero."""
    half = dim // 2
    freq = np.exp(np.arange(half, dtype=np.float32) * -(math.log(10000.0) / (half - 1)))
    ang = np.arange(num, dtype=np.float32)[:, None] * freq[None, :]
    table = np.concatenate([np.sin(ang), np.cos(ang)], axis=1)
    if dim % 2:
        table = np.concatenate([table, np.zeros((num, 1), np.float32)], axis=1)
    table[pad_id] = 0.0
    return table.astype(np.float32)


def make_positions(tokens, pad_id: int):
    """Non-pad tokens count from pad_id+1; pads get pad_id (the zero row)."""
    mask = (tokens != pad_id).astype(jnp.int32)
    return jnp.cumsum(mask, axis=1) * mask + pad_id


class Attention(nn.Module):
    dim: int
    heads: int

    def setup(self):
        hd = self.dim // self.heads
        proj = dict(features=(self.heads, hd), kernel_init=_qkv_init, bias_init=nn.initializers.zeros)
        self.query = nn.DenseGeneral(**proj)
        self.key = nn.DenseGeneral(**proj)
        self.value = nn.DenseGeneral(**proj)
        self.out = nn.DenseGeneral(self.dim, axis=(-2, -1), kernel_init=_xavier, bias_init=nn.initializers.zeros)

    def kv(self, x):
        return self.key(x), self.value(x)

    def attend(self, x, k, v, valid):
        """Queries from x (B,Q,D) over k/v (B,K,H,hd); valid broadcasts to (B,H,Q,K), True = attend."""
        q = self.query(x)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
        scores = jnp.where(valid, scores, _MASKED)
        w = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
        return self.out(jnp.einsum("bhqk,bkhd->bqhd", w, v))

    def __call__(self, x, mem, valid):
        k, v = self.kv(mem)
        return self.attend(x, k, v, valid)


class FFN(nn.Module):
    dim: int
    ffn_dim: int

    @nn.compact
    def __call__(self, x):
        dense = dict(kernel_init=_xavier, bias_init=nn.initializers.zeros)
        x = nn.relu(nn.Dense(self.ffn_dim, name="fc1", **dense)(x))
        return nn.Dense(self.dim, name="fc2", **dense)(x)


class EncoderLayer(nn.Module):
    dim: int
    ffn_dim: int
    heads: int
    dropout_rate: float

    def setup(self):
        self.self_attn = Attention(self.dim, self.heads)
        self.self_attn_ln = nn.LayerNorm(epsilon=LN_EPS)
        self.ffn = FFN(self.dim, self.ffn_dim)
        self.ffn_ln = nn.LayerNorm(epsilon=LN_EPS)
        self.drop = nn.Dropout(self.dropout_rate)

    def __call__(self, x, valid, train: bool):
        x = self.self_attn_ln(x + self.drop(self.self_attn(x, x, valid), deterministic=not train))
        return self.ffn_ln(x + self.drop(self.ffn(x), deterministic=not train))


class DecoderLayer(nn.Module):
    dim: int
    ffn_dim: int
    heads: int
    dropout_rate: float

    def setup(self):
        self.self_attn = Attention(self.dim, self.heads)
        self.self_attn_ln = nn.LayerNorm(epsilon=LN_EPS)
        self.cross_attn = Attention(self.dim, self.heads)
        self.cross_attn_ln = nn.LayerNorm(epsilon=LN_EPS)
        self.ffn = FFN(self.dim, self.ffn_dim)
        self.ffn_ln = nn.LayerNorm(epsilon=LN_EPS)
        self.drop = nn.Dropout(self.dropout_rate)

    def _rest(self, x, cross_k, cross_v, cross_valid, train: bool):
        det = not train
        cross = self.cross_attn.attend(x, cross_k, cross_v, cross_valid)
        x = self.cross_attn_ln(x + self.drop(cross, deterministic=det))
        return self.ffn_ln(x + self.drop(self.ffn(x), deterministic=det))

    def __call__(self, x, memory, self_valid, cross_valid, train: bool):
        x = self.self_attn_ln(x + self.drop(self.self_attn(x, x, self_valid), deterministic=not train))
        ck, cv = self.cross_attn.kv(memory)
        return self._rest(x, ck, cv, cross_valid, train)

    def cross_kv(self, memory):
        return self.cross_attn.kv(memory)

    def step(self, x, t, cache, cross_k, cross_v, cross_valid):
        """One position x (N,1,D) at index t; cache {'k','v'} (N,Tmax,H,hd) gets slot t written."""
        k, v = self.self_attn.kv(x)
        ck = jax.lax.dynamic_update_slice_in_dim(cache["k"], k.astype(cache["k"].dtype), t, axis=1)
        cv = jax.lax.dynamic_update_slice_in_dim(cache["v"], v.astype(cache["v"].dtype), t, axis=1)
        valid = (jnp.arange(ck.shape[1]) <= t)[None, None, None, :]
        x = self.self_attn_ln(x + self.self_attn.attend(x, ck, cv, valid))
        return self._rest(x, cross_k, cross_v, cross_valid, False), {"k": ck, "v": cv}


class TransformerMT(nn.Module):
    src_vocab: int
    tgt_vocab: int
    embed_dim: int = 512
    ffn_dim: int = 1024
    heads: int = 4
    encoder_layers: int = 6
    decoder_layers: int = 6
    dropout_rate: float = 0.3
    max_positions: int = 1024
    pad_id: int = PAD

    def setup(self):
        init = embed_init(self.pad_id, self.embed_dim ** -0.5)
        self.src_embed = nn.Embed(self.src_vocab, self.embed_dim, embedding_init=init)
        self.tgt_embed = nn.Embed(self.tgt_vocab, self.embed_dim, embedding_init=init)
        layer = dict(dim=self.embed_dim, ffn_dim=self.ffn_dim, heads=self.heads, dropout_rate=self.dropout_rate)
        self.encoder = [EncoderLayer(**layer) for _ in range(self.encoder_layers)]
        self.decoder = [DecoderLayer(**layer) for _ in range(self.decoder_layers)]
        self.drop = nn.Dropout(self.dropout_rate)

    def _positions(self):
        return jnp.asarray(sinusoid_table(self.max_positions + self.pad_id + 1, self.embed_dim, self.pad_id))

    def _embed(self, embed, tokens, pos, train: bool):
        x = embed(tokens) * math.sqrt(self.embed_dim) + self._positions()[pos]
        return self.drop(x, deterministic=not train)

    def encode(self, src, train: bool = False):
        pad = src == self.pad_id
        x = self._embed(self.src_embed, src, make_positions(src, self.pad_id), train)
        valid = ~pad[:, None, None, :]
        for layer in self.encoder:
            x = layer(x, valid, train)
        return x, pad

    def decode(self, memory, src_pad_mask, prev, train: bool = False):
        T = prev.shape[1]
        y = self._embed(self.tgt_embed, prev, make_positions(prev, self.pad_id), train)
        causal = jnp.tril(jnp.ones((T, T), bool))[None, None]
        self_valid = causal & (prev != self.pad_id)[:, None, None, :]
        cross_valid = ~src_pad_mask[:, None, None, :]
        for layer in self.decoder:
            y = layer(y, memory, self_valid, cross_valid, train)
        return self._output(y)

    def _output(self, y):
        return jax.nn.log_softmax(self.tgt_embed.attend(y).astype(jnp.float32), axis=-1)

    def __call__(self, x, train: bool = False):
        src, prev = x
        memory, pad = self.encode(src, train)
        return self.decode(memory, pad, prev, train)

    # ---- incremental decoding (inference only) ------------------------------------------------

    def cross_kv(self, memory):
        """Per decoder layer (k, v) of the memory, (B,S,H,hd) each: computed once per source."""
        return tuple(layer.cross_kv(memory) for layer in self.decoder)

    def init_cache(self, batch: int, max_len: int, dtype=jnp.float32):
        """Zero self-attention cache for ``max_len`` decoder positions (a pure function of shapes)."""
        shape = (batch, max_len, self.heads, self.embed_dim // self.heads)
        return tuple({"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(self.decoder_layers))

    def decode_step(self, token, t, cache, cross, src_pad_mask):
        """Log-probs (N,V) of the next token after input ``token`` (N,) at decoder index t.

        Equals ``decode(...)[:, t]`` for a pad-free prefix whose first t entries are in the cache.
        """
        pos = jnp.where(token == self.pad_id, self.pad_id, t + self.pad_id + 1)
        y = self._embed(self.tgt_embed, token[:, None], pos[:, None], False)
        cross_valid = ~src_pad_mask[:, None, None, :]
        new_cache = []
        for layer, c, (ck, cv) in zip(self.decoder, cache, cross):
            y, c = layer.step(y, t, c, ck, cv, cross_valid)
            new_cache.append(c)
        return self._output(y[:, 0]), tuple(new_cache)


def controlled_layer(names: tuple[str, ...]) -> str:
    """The reference's controlled layer of a parameter (its path ``names``), for the LLQR blocks.

    The reference's stages are: both embeddings together; per encoder layer the self-attention,
    its residual LayerNorm, fc1, and fc2 with the following LayerNorm; per decoder layer also the
    cross-attention and its LayerNorm. Our modules group a whole encoder/decoder layer instead.
    """
    top = names[0]
    if top in ("src_embed", "tgt_embed"):
        return "embed"
    part = names[1]
    if part == "ffn":
        return f"{top}/fc1" if names[2] == "fc1" else f"{top}/fc2_ln"
    if part == "ffn_ln":
        return f"{top}/fc2_ln"
    return f"{top}/{part}"


def non_embedding_param_count(embed_dim=512, ffn_dim=1024, encoder_layers=6, decoder_layers=6) -> int:
    """Parameters outside the two embeddings (31,543,296 for the IWSLT size)."""
    attn = 4 * (embed_dim * embed_dim + embed_dim)
    ffn = 2 * embed_dim * ffn_dim + ffn_dim + embed_dim
    ln = 2 * embed_dim
    return encoder_layers * (attn + ffn + 2 * ln) + decoder_layers * (2 * attn + ffn + 3 * ln)
