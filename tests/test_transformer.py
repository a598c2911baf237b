"""The IWSLT Transformer: size, masking, positions, dropout and the cached decoding path."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llqr.models.transformer import EOS, PAD, TransformerMT, non_embedding_param_count

V = 24
TINY = dict(src_vocab=V, tgt_vocab=V, embed_dim=32, ffn_dim=64, heads=2, encoder_layers=2, decoder_layers=2,
            max_positions=64)


def _count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


@pytest.fixture(scope="module")
def tiny():
    model = TransformerMT(**TINY)
    src = jnp.array([[PAD, PAD, 5, 6, 7, EOS], [4, 9, 8, 10, 11, EOS]], jnp.int32)
    prev = jnp.array([[EOS, 5, 6, 7, PAD], [EOS, 4, 9, 8, 10]], jnp.int32)
    variables = jax.jit(lambda k: model.init({"params": k}, (src, prev), train=False))(jax.random.PRNGKey(0))
    return model, variables, src, prev


@pytest.fixture(scope="module")
def fwd(tiny):
    model = tiny[0]
    return jax.jit(lambda v, s, p: model.apply(v, (s, p), train=False))


def _jit_apply(model, method=None, **kw):
    """Eager Flax applies dispatch op by op; jitting keeps this file fast on CPU."""
    return jax.jit(lambda v, *a: model.apply(v, *a, method=method, **kw))


def test_param_count_formula():
    assert non_embedding_param_count() == 31_543_296
    model = TransformerMT(src_vocab=16, tgt_vocab=16)
    x = (jnp.ones((1, 3), jnp.int32), jnp.ones((1, 2), jnp.int32))
    shapes = jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0)}, x, train=False))
    assert set(shapes) == {"params"}
    assert _count(shapes) == 31_543_296 + 512 * (16 + 16)
    qkv = shapes["params"]["encoder_0"]["self_attn"]["query"]["kernel"]
    assert qkv.shape == (512, 4, 128)


def test_small_param_count(tiny):
    model, variables, _, _ = tiny
    assert _count(variables) == non_embedding_param_count(32, 64, 2, 2) + 32 * 2 * V


def test_qkv_init_scale(tiny):
    _, variables, _, _ = tiny
    k = variables["params"]["decoder_1"]["cross_attn"]["key"]["kernel"]
    limit = np.sqrt(0.5 * 6.0 / (32 + 32))  # xavier_uniform, gain 1/sqrt(2), on the (emb, emb) view
    assert float(jnp.max(jnp.abs(k))) <= limit
    assert float(jnp.max(jnp.abs(k))) > 0.8 * limit


def test_shapes_and_normalised(tiny, fwd):
    model, variables, src, prev = tiny
    out = fwd(variables, src, prev)
    assert out.shape == (2, 5, V) and out.dtype == jnp.float32
    np.testing.assert_allclose(np.exp(np.asarray(out)).sum(-1), 1.0, atol=1e-5)


def test_pad_rows_zero(tiny):
    _, variables, _, _ = tiny
    p = variables["params"]
    for name in ("src_embed", "tgt_embed"):
        table = np.asarray(p[name]["embedding"])
        assert np.all(table[PAD] == 0.0) and np.abs(table[PAD + 1:]).sum() > 0


def test_left_padding_invariance(tiny):
    model, variables, _, _ = tiny
    sent = [7, 12, 5, 9, EOS]
    a = jnp.array([sent], jnp.int32)
    b = jnp.array([[PAD] * 3 + sent], jnp.int32)
    enc = _jit_apply(model, TransformerMT.encode, train=False)
    ma, _ = enc(variables, a)
    mb, pad = enc(variables, b)
    assert pad.tolist() == [[True] * 3 + [False] * 5]
    np.testing.assert_allclose(np.asarray(ma[0]), np.asarray(mb[0, 3:]), atol=1e-5)


def test_causal(tiny, fwd):
    model, variables, src, prev = tiny
    changed = prev.at[:, 3].set(13)
    a = np.asarray(fwd(variables, src, prev))
    b = np.asarray(fwd(variables, src, changed))
    np.testing.assert_allclose(a[:, :3], b[:, :3], atol=1e-6)
    assert np.abs(a[:, 3:] - b[:, 3:]).max() > 1e-4


def test_fully_padded_row_no_nan(tiny, fwd):
    model, variables, src, prev = tiny
    out = fwd(variables, src.at[1].set(PAD), prev.at[1].set(PAD))
    assert np.isfinite(np.asarray(out)).all()


@pytest.mark.slow
def test_dropout_only_in_train(tiny, fwd):
    model, variables, src, prev = tiny
    e1, e2 = fwd(variables, src, prev), fwd(variables, src, prev)
    np.testing.assert_array_equal(np.asarray(e1), np.asarray(e2))
    train = jax.jit(lambda v, k: model.apply(v, (src, prev), train=True, rngs={"dropout": k}))
    t1, t2 = train(variables, jax.random.PRNGKey(1)), train(variables, jax.random.PRNGKey(2))
    assert np.abs(np.asarray(t1) - np.asarray(e1)).max() > 1e-3
    assert np.abs(np.asarray(t1) - np.asarray(t2)).max() > 1e-3


def test_incremental_equals_full(tiny):
    model, variables, src, _ = tiny
    T = 6
    prev = jnp.array([[EOS, 5, 6, 7, 8, 9], [EOS, 4, 12, 4, 13, 20]], jnp.int32)
    memory, pad = _jit_apply(model, TransformerMT.encode, train=False)(variables, src)
    full = _jit_apply(model, TransformerMT.decode, train=False)(variables, memory, pad, prev)
    cross = model.apply(variables, memory, method=TransformerMT.cross_kv)
    cache = model.apply(variables, 2, T + 2, method=TransformerMT.init_cache)  # longer than used
    step = jax.jit(lambda c, tok, t: model.apply(variables, tok, t, c, cross, pad, method=TransformerMT.decode_step))
    for t in range(T):
        lp, cache = step(cache, prev[:, t], t)
        np.testing.assert_allclose(np.asarray(lp), np.asarray(full[:, t]), atol=1e-5)
