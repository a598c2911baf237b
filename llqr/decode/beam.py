"""Jitted batched beam search and greedy decoding, fairseq-style, with static shapes.

Both searches are written against a step function ``step_fn(state, last_tokens, t) ->
(log_probs (N, V), state)`` whose state leaves all lead with N = batch*beam, so they can be driven
by the Transformer's cached ``decode_step`` or by a hand-written function in tests. Step t feeds the
token produced at step t-1 (eos at t=0) and yields the distribution of output token t; output token
t = max_len is forced to eos, so outputs have L = max_len + 1 columns (right-padded with pad).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

BOS, PAD, EOS = 0, 1, 2
_NEG = -jnp.inf


def max_decode_len(src_width: int, max_len_a: float, max_len_b: int, max_positions: int) -> int:
    return min(int(max_len_a * src_width + max_len_b), max_positions - 1)


def _apply_bans(lp, t, min_len: int, max_len: int):
    """Pad and bos never; eos not before min_len tokens; only eos (its own log-prob) at max_len."""
    lp = lp.astype(jnp.float32)
    eos_lp = lp[:, EOS]
    lp = lp.at[:, PAD].set(_NEG).at[:, BOS].set(_NEG)
    lp = lp.at[:, EOS].set(jnp.where(t < min_len, _NEG, eos_lp))
    forced = jnp.full_like(lp, _NEG).at[:, EOS].set(eos_lp)
    return jnp.where(t >= max_len, forced, lp)


def _beam_core(step_fn, state, batch: int, *, beam_size: int, max_len: int, min_len: int = 1,
               len_penalty: float = 1.0):
    """Beam search over ``step_fn``; returns (tokens (batch, max_len+1), normalised scores (batch,))."""
    B, K, L = batch, beam_size, max_len + 1
    cols = jnp.arange(L)

    def body(c):
        t = c["t"]
        lp, st = step_fn(c["state"], c["last"], t)
        lp = _apply_bans(lp, t, min_len, max_len)
        V = lp.shape[-1]
        cand = (c["scores"][:, :, None] + lp.reshape(B, K, V)).reshape(B, K * V)
        top_s, top_i = jax.lax.top_k(cand, 2 * K)  # (B, 2K), best first
        origin, tok = top_i // V, top_i % V
        hist = jnp.take_along_axis(c["tokens"], origin[:, :, None], axis=1)
        hist = jnp.where(cols == t, tok[:, :, None], hist)  # (B, 2K, L)

        # Finalise eos among the top K, best first, while the sentence has room for them.
        eos_top = (tok[:, :K] == EOS) & jnp.isfinite(top_s[:, :K])
        accept = eos_top & (c["fin_count"][:, None] + jnp.cumsum(eos_top, axis=1) <= K)
        norm = jnp.where(accept, top_s[:, :K] / (t + 1.0) ** len_penalty, _NEG)
        j = jnp.argmax(norm, axis=1)
        new_best = jnp.take_along_axis(norm, j[:, None], axis=1)[:, 0]
        improve = new_best > c["best_score"]
        best_tokens = jnp.where(improve[:, None], hist[jnp.arange(B), j], c["best_tokens"])
        best_score = jnp.where(improve, new_best, c["best_score"])

        # The next beams: the first K candidates that are not eos (there are always K of 2K).
        rank = jnp.where(tok == EOS, 2 * K, 0) + jnp.arange(2 * K)
        _, keep = jax.lax.top_k(-rank, K)
        g = lambda x: jnp.take_along_axis(x, keep, axis=1)  # noqa: E731
        flat = (jnp.arange(B)[:, None] * K + g(origin)).reshape(-1)
        return {
            "t": t + 1,
            "last": g(tok).reshape(-1).astype(jnp.int32),
            "scores": g(top_s),
            "tokens": jnp.take_along_axis(hist, keep[:, :, None], axis=1),
            "state": jax.tree_util.tree_map(lambda x: x[flat], st),
            "fin_count": c["fin_count"] + accept.sum(axis=1, dtype=jnp.int32),
            "best_score": best_score,
            "best_tokens": best_tokens,
        }

    def cond(c):
        return (c["t"] <= max_len) & jnp.any(c["fin_count"] < K)

    init = {
        "t": jnp.int32(0),
        "last": jnp.full((B * K,), EOS, jnp.int32),
        "scores": jnp.full((B, K), _NEG, jnp.float32).at[:, 0].set(0.0),  # step 0 expands beam 0 only
        "tokens": jnp.full((B, K, L), PAD, jnp.int32),
        "state": state,
        "fin_count": jnp.zeros((B,), jnp.int32),
        "best_score": jnp.full((B,), _NEG, jnp.float32),
        "best_tokens": jnp.full((B, L), PAD, jnp.int32),
    }
    c = jax.lax.while_loop(cond, body, init)
    # Fallback (nothing finalised, e.g. every score -inf): the best active beam, normalised alike.
    none = ~jnp.isfinite(c["best_score"])
    active = c["scores"][:, 0] / jnp.maximum(c["t"], 1).astype(jnp.float32) ** len_penalty
    tokens = jnp.where(none[:, None], c["tokens"][:, 0], c["best_tokens"])
    return tokens, jnp.where(none, active, c["best_score"])


def _greedy_core(step_fn, state, batch: int, *, max_len: int, min_len: int = 1, len_penalty: float = 1.0):
    """Argmax decoding with beam search's bans; score = sum of log-probs / length**len_penalty."""
    B, L = batch, max_len + 1
    cols = jnp.arange(L)

    def body(c):
        t = c["t"]
        lp, st = step_fn(c["state"], c["last"], t)
        lp = _apply_bans(lp, t, min_len, max_len)
        tok = jnp.argmax(lp, axis=-1).astype(jnp.int32)
        live = ~c["done"]
        step_lp = jnp.take_along_axis(lp, tok[:, None], axis=1)[:, 0]
        tokens = jnp.where((cols == t) & live[:, None], tok[:, None], c["tokens"])
        return {
            "t": t + 1,
            "last": tok,
            "tokens": tokens,
            "state": st,
            "sum": c["sum"] + jnp.where(live, step_lp, 0.0),
            "length": c["length"] + live.astype(jnp.int32),
            "done": c["done"] | (tok == EOS),
        }

    def cond(c):
        return (c["t"] <= max_len) & ~jnp.all(c["done"])

    init = {
        "t": jnp.int32(0),
        "last": jnp.full((B,), EOS, jnp.int32),
        "tokens": jnp.full((B, L), PAD, jnp.int32),
        "state": state,
        "sum": jnp.zeros((B,), jnp.float32),
        "length": jnp.zeros((B,), jnp.int32),
        "done": jnp.zeros((B,), bool),
    }
    c = jax.lax.while_loop(cond, body, init)
    return c["tokens"], c["sum"] / jnp.maximum(c["length"], 1).astype(jnp.float32) ** len_penalty


def _model_step_fn(model, variables, src, copies: int, max_len: int):
    """The model's cached step function over ``copies`` rows per source, and its empty cache."""
    memory, pad = model.apply(variables, src, False, method="encode")
    cross = model.apply(variables, memory, method="cross_kv")
    rep = functools.partial(jnp.repeat, repeats=copies, axis=0)
    cross, pad = jax.tree_util.tree_map(rep, cross), rep(pad)

    def step_fn(cache, token, t):
        return model.apply(variables, token, t, cache, cross, pad, method="decode_step")

    cache = model.apply(variables, src.shape[0] * copies, max_len + 1, memory.dtype, method="init_cache")
    return step_fn, cache


@functools.partial(jax.jit, static_argnames=("model", "beam_size", "max_len", "min_len", "len_penalty"))
def _beam_jit(model, variables, src, *, beam_size, max_len, min_len, len_penalty):
    step_fn, cache = _model_step_fn(model, variables, src, beam_size, max_len)
    return _beam_core(step_fn, cache, src.shape[0], beam_size=beam_size, max_len=max_len, min_len=min_len,
                      len_penalty=len_penalty)


@functools.partial(jax.jit, static_argnames=("model", "max_len", "min_len", "len_penalty"))
def _greedy_jit(model, variables, src, *, max_len, min_len, len_penalty):
    step_fn, cache = _model_step_fn(model, variables, src, 1, max_len)
    return _greedy_core(step_fn, cache, src.shape[0], max_len=max_len, min_len=min_len, len_penalty=len_penalty)


def beam_search(model, variables, src, *, beam_size=5, max_len_a=1.2, max_len_b=10, min_len=1, len_penalty=1.0,
                max_positions=1024):
    """Best finalised hypothesis per left-padded source row: (tokens (B, max_len+1), scores (B,)).

    Tokens exclude the leading eos and include the final one; scores are summed log-probs over
    length**len_penalty. Compiled once per (model, src shape, options); all-pad rows are harmless.
    """
    src = jnp.asarray(src, jnp.int32)
    max_positions = min(max_positions, getattr(model, "max_positions", max_positions))  # stay inside the table
    max_len = max_decode_len(src.shape[1], max_len_a, max_len_b, max_positions)
    return _beam_jit(model, variables, src, beam_size=int(beam_size), max_len=max_len, min_len=int(min_len),
                     len_penalty=float(len_penalty))


def greedy_decode(model, variables, src, *, max_len_a=1.2, max_len_b=10, min_len=1, max_positions=1024,
                  len_penalty=1.0):
    """Argmax decoding in beam_search's output format (scores normalised the same way)."""
    src = jnp.asarray(src, jnp.int32)
    max_positions = min(max_positions, getattr(model, "max_positions", max_positions))  # stay inside the table
    max_len = max_decode_len(src.shape[1], max_len_a, max_len_b, max_positions)
    return _greedy_jit(model, variables, src, max_len=max_len, min_len=int(min_len), len_penalty=float(len_penalty))
