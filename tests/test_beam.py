"""Beam search and greedy decoding: driven by hand-written step functions and by a tiny model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llqr.decode import beam_search, greedy_decode
from llqr.decode.beam import EOS, PAD, _beam_core, _greedy_core, max_decode_len
from llqr.models.transformer import TransformerMT

V = 20


def _run_beam(step_fn, batch, **kw):
    return jax.jit(lambda: _beam_core(step_fn, (), batch, **kw))()


def _run_greedy(step_fn, batch, **kw):
    return jax.jit(lambda: _greedy_core(step_fn, (), batch, **kw))()


def _table_step(rows, copies, table_fn):
    """A stateless step function whose log-probs come from ``table_fn(row, last, t) -> (N, V)``."""
    row = jnp.arange(rows * copies) // copies

    def step(state, last, t):
        return jax.nn.log_softmax(table_fn(row, last, t), axis=-1), state

    return step


def _strip(tokens):
    out = []
    for row in np.asarray(tokens):
        out.append([int(x) for x in row if x != PAD])
    return out


def test_oracle_copy_returns_source():
    src = [[5, 9, 7, 4, 11], [6, 6, 12], [19, 4, 8, 15, 10, 13, 17], [4]]
    S, K = 7, 5
    max_len = max_decode_len(S, 1.2, 10, 1024)
    target = np.full((len(src), max_len + 1), EOS, np.int32)
    for i, s in enumerate(src):
        target[i, :len(s)] = s
    target = jnp.asarray(target)

    def logits(row, last, t):
        return jnp.where(jnp.arange(V) == target[row, t][:, None], 10.0, 0.0)

    tokens, scores = _run_beam(_table_step(len(src), K, logits), len(src), beam_size=K, max_len=max_len)
    assert tokens.shape == (len(src), max_len + 1) and tokens.dtype == jnp.int32
    assert _strip(tokens) == [s + [EOS] for s in src]
    assert np.isfinite(np.asarray(scores)).all() and (np.asarray(scores) < 0).all()


def _never_eos(row, last, t):
    return jnp.where(jnp.arange(V) == EOS, -10.0, 0.0) + 0.01 * jnp.arange(V)[None, :] + 0.0 * row[:, None]


def test_eos_forced_at_max_len():
    max_len = 6
    tokens, _ = _run_beam(_table_step(2, 3, _never_eos), 2, beam_size=3, max_len=max_len)
    gtokens, _ = _run_greedy(_table_step(2, 1, _never_eos), 2, max_len=max_len)
    for toks in (tokens, gtokens):
        toks = np.asarray(toks)
        assert toks.shape == (2, max_len + 1)
        assert (toks[:, -1] == EOS).all() and (toks[:, :-1] != EOS).all() and (toks != PAD).all()


def _eager_eos(row, last, t):
    return jnp.where(jnp.arange(V) == EOS, 10.0, 0.0) + 0.0 * row[:, None]


@pytest.mark.parametrize("min_len", [1, 3])
def test_min_len_respected(min_len):
    tokens, _ = _run_beam(_table_step(2, 4, _eager_eos), 2, beam_size=4, max_len=8, min_len=min_len)
    gtokens, _ = _run_greedy(_table_step(2, 1, _eager_eos), 2, max_len=8, min_len=min_len)
    for toks in (tokens, gtokens):
        for row in _strip(toks):
            assert len(row) == min_len + 1 and row[-1] == EOS and EOS not in row[:-1]
            assert 0 not in row and PAD not in row  # bos and pad are banned


A, B, C = 4, 5, 6


def _length_trap(row, last, t):
    """[A, eos] sums to -2.0 (mean -1.0); [B, C, eos] sums to -2.3 (mean -0.77)."""
    base = jnp.full((last.shape[0], V), -20.0)
    tok = jnp.arange(V)[None, :]
    first = jnp.where(tok == A, -1.0, jnp.where(tok == B, -1.1, base))
    after_a = jnp.where(tok == EOS, -1.0, base)
    after_b = jnp.where(tok == C, -0.2, jnp.where(tok == EOS, -5.0, base))
    after_c = jnp.where(tok == EOS, -1.0, base)
    last = last[:, None]
    return jnp.where(last == A, after_a, jnp.where(last == B, after_b, jnp.where(last == C, after_c, first)))


@pytest.mark.parametrize("len_penalty,expected,score", [(1.0, [B, C, EOS], -2.3 / 3), (0.0, [A, EOS], -2.0)])
def test_length_penalty_normalisation(len_penalty, expected, score):
    row = jnp.arange(2)

    def step(state, last, t):  # no log_softmax: the table already holds the intended log-probs
        return _length_trap(row, last, t), state

    tokens, scores = _run_beam(step, 1, beam_size=2, max_len=6, len_penalty=len_penalty)
    assert _strip(tokens) == [expected]
    np.testing.assert_allclose(np.asarray(scores), [score], rtol=1e-5)


@pytest.mark.slow
def test_beam1_equals_greedy_random_table():
    """A random Markov table (row, last token, t) with a strong eos column: varied lengths."""
    rows, max_len = 6, 9
    table = 3.0 * jax.random.normal(jax.random.PRNGKey(0), (rows, V, max_len + 1, V))
    eos_boost = jnp.linspace(-1.0, 4.0, rows)[:, None, None] + 0.8 * jnp.arange(max_len + 1)[None, None, :]
    table = table.at[..., EOS].add(eos_boost)

    def logits(row, last, t):
        return table[row, last, t]

    btoks, bscores = _run_beam(_table_step(rows, 1, logits), rows, beam_size=1, max_len=max_len)
    gtoks, gscores = _run_greedy(_table_step(rows, 1, logits), rows, max_len=max_len)
    np.testing.assert_array_equal(np.asarray(btoks), np.asarray(gtoks))
    np.testing.assert_allclose(np.asarray(bscores), np.asarray(gscores), rtol=1e-5)
    assert len({len(r) for r in _strip(gtoks)}) >= 3  # the table does exercise different lengths


@pytest.fixture(scope="module")
def tiny():
    model = TransformerMT(src_vocab=V, tgt_vocab=V, embed_dim=32, ffn_dim=64, heads=2, encoder_layers=2,
                          decoder_layers=2, dropout_rate=0.0, max_positions=64)
    src = np.array([[PAD, PAD, PAD, 5, 6, 7, EOS],
                    [4, 9, 8, 10, 11, 12, EOS],
                    [PAD, PAD, PAD, PAD, PAD, 13, EOS],
                    [PAD, 14, 15, 16, 17, 18, EOS]], np.int32)
    prev = jnp.full((1, 3), EOS, jnp.int32)
    variables = jax.jit(lambda k: model.init({"params": k}, (jnp.asarray(src[:1]), prev)))(jax.random.PRNGKey(3))
    # Sharpen the random model (larger output logits) so decoding is not a coin toss.
    params = jax.tree_util.tree_map(lambda x: x, variables["params"])
    params["tgt_embed"]["embedding"] = 4.0 * params["tgt_embed"]["embedding"]
    return model, {"params": params}, src


def test_beam1_equals_greedy(tiny):
    model, variables, src = tiny
    kw = dict(max_len_a=0.5, max_len_b=4, max_positions=64)
    btoks, bscores = beam_search(model, variables, src, beam_size=1, **kw)
    gtoks, gscores = greedy_decode(model, variables, src, **kw)
    L = max_decode_len(src.shape[1], 0.5, 4, 64) + 1
    assert btoks.shape == gtoks.shape == (src.shape[0], L)
    np.testing.assert_array_equal(np.asarray(btoks), np.asarray(gtoks))
    np.testing.assert_allclose(np.asarray(bscores), np.asarray(gscores), rtol=1e-5)
    for row in np.asarray(btoks):  # right-padded after the eos
        n = int(np.argmax(row == EOS)) if EOS in row else L
        assert (row[n + 1:] == PAD).all() and (row[:n] != PAD).all()


@pytest.mark.slow
def test_padded_row_harmless(tiny):
    model, variables, src = tiny
    kw = dict(beam_size=3, max_len_a=0.5, max_len_b=4, max_positions=64)
    toks, scores = beam_search(model, variables, src, **kw)
    padded = src.copy()
    padded[1] = PAD
    ptoks, pscores = beam_search(model, variables, padded, **kw)
    keep = [0, 2, 3]
    assert np.isfinite(np.asarray(scores)).all() and np.isfinite(np.asarray(pscores)[keep]).all()
    np.testing.assert_array_equal(np.asarray(ptoks)[keep], np.asarray(toks)[keep])
    np.testing.assert_allclose(np.asarray(pscores)[keep], np.asarray(scores)[keep], rtol=1e-5)


def test_model_beam_matches_full_prefix_rescoring(tiny):
    """The cached, beam-reordered decoder gives what recomputing every prefix in full gives."""
    model, variables, src = tiny
    K, max_len = 3, max_decode_len(src.shape[1], 0.5, 4, 64)
    toks, scores = beam_search(model, variables, src, beam_size=K, max_len_a=0.5, max_len_b=4, max_positions=64)

    def run():
        memory, pad = model.apply(variables, jnp.asarray(src), False, method="encode")
        memory, pad = jnp.repeat(memory, K, axis=0), jnp.repeat(pad, K, axis=0)

        def step(hist, last, t):
            hist = jnp.where(jnp.arange(max_len + 1) == t, last[:, None], hist)
            lp = model.apply(variables, memory, pad, hist, False, method="decode")
            return jnp.take(lp, t, axis=1), hist

        hist = jnp.full((src.shape[0] * K, max_len + 1), PAD, jnp.int32)
        return _beam_core(step, hist, src.shape[0], beam_size=K, max_len=max_len)

    rtoks, rscores = jax.jit(run)()
    np.testing.assert_array_equal(np.asarray(toks), np.asarray(rtoks))
    np.testing.assert_allclose(np.asarray(scores), np.asarray(rscores), rtol=1e-5, atol=1e-6)
