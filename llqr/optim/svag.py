"""SVAG, noisy gradient descent and the linear-scaling-rule noise statistics, as pure functions.

Li, Malladi & Arora (2021), "On the validity of modeling SGD with SDEs". Everything here is
jit-friendly and takes explicit PRNG keys; nothing holds state or reads a config.

**SVAG (``sde1``).** With parameter ``l >= 1`` a step draws 2B examples, split into independent
halves γ1, γ2 of B, and descends

    L̃ = c1·L_γ1 + c2·L_γ2,   c1,2 = (1 ± √(2l−1))/2   (c1 + c2 = 1, c1² + c2² = l)

with learning rate η/l for l times as many steps (schedule milestones times l as well). Its
gradient is unbiased and, when the halves are independent draws of B examples (with
replacement), its noise covariance is (c1² + c2²)·Σ/B = l·Σ/B, Σ the per-example gradient
covariance. (Halves of one without-replacement draw of 2B out of N examples are anticorrelated:
l·V + (l−1)·Σ_N/(N−1), V = Σ_N/B·(N−B)/(N−1), Σ_N as below.) At l = 1, c1 = 1.0 and c2 = 0.0 exactly and
the step is SGD on γ1: ``svag_loss`` then evaluates only γ1, so it is bit-identical to plain SGD on that
half.

**``sde2``.** One batch of B; its loss is multiplied by (1 + √(l−1)·r), r = ±1 a Rademacher sign
drawn once per step. The gradient stays unbiased, but the noise covariance becomes

    E[(1+√(l−1)r)²]·(Σ/B + ∇L∇Lᵀ) − ∇L∇Lᵀ = l·Σ/B + (l−1)·∇L∇Lᵀ,

i.e. SVAG's l·Σ/B plus an extra (l−1)·∇L∇Lᵀ term (noise along the gradient itself). It needs
one forward pass of B instead of two, but does not share sde1's SDE limit when ∇L is not small.

**Noisy gradient descent** (not natural gradient). A fixed subset of N examples; every step the
full-batch loss is reweighted with δ_i = 1 + √(N/B)·(z_i − z̄), z ~ N(0, I_N) fresh each step:

    ∇[(1/N) Σ δ_i ℓ_i] = ∇L + (1/√(NB)) Σ_i (z_i − z̄)(g_i − ḡ),

Gaussian noise with covariance exactly Σ_N/B, Σ_N = (1/N) Σ_i (g_i − ḡ)(g_i − ḡ)ᵀ the
finite-population covariance (1/N, not 1/(N−1)) of the N per-example gradients; centring z makes
it exact (Cov(z_i − z̄, z_j − z̄) = δ_ij − 1/N, and Σ_i (g_i − ḡ) = 0). This equals the covariance
of a with-replacement minibatch of B from the N examples; a without-replacement minibatch has
Σ_N/B·(N−B)/(N−1).

**Weights.** ``weighted_loss(ℓ, w) = mean(w ⊙ ℓ)`` over the examples given. ``svag_example_weights``
returns 2c1 on the first half and 2c2 on the second, so that weighted_loss = c1·L_γ1 + c2·L_γ2;
``noisy_gd_weights`` returns δ. The weighted form needs per-example losses that do not depend on
the rest of the batch: with BatchNorm in train mode, each half must be its own forward pass
(``svag_loss`` does that), or the batch statistics would mix the halves.

**Noise statistics** (the LSR diagnostics of the paper's section 5): G = ‖∇L‖², N = tr Σ (the
per-example gradient covariance; a minibatch gradient's noise has trace N/B), and the ratio
N/(B·G), large when noise dominates (where the LSR is expected to hold). ``noise_statistics``
documents the estimator.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

SVAG_VARIANTS = ("sde1", "sde2")


def _check_l(l):
    if isinstance(l, (int, float)) and not l >= 1:
        raise ValueError(f"SVAG needs l >= 1, got {l}")


def _sqrt(v):
    return math.sqrt(v) if isinstance(v, (int, float)) else jnp.sqrt(v)


def _check_variant(variant):
    if variant not in SVAG_VARIANTS:
        raise ValueError(f"unknown SVAG variant {variant!r}; expected one of {SVAG_VARIANTS}")


# --- SVAG -----------------------------------------------------------------------------------------


def svag_coefficients(l):
    """(c1, c2) = ((1 + √(2l−1))/2, (1 − √(2l−1))/2): c1 + c2 = 1, c1² + c2² = l.

    Python floats for a Python ``l`` (so ``c2 == 0.0`` can be tested statically; at l = 1 they are
    exactly 1.0 and 0.0), arrays for a traced one.
    """
    _check_l(l)
    s = _sqrt(2 * l - 1)
    return (1 + s) / 2, (1 - s) / 2


def svag_lr(lr, l):
    """The SVAG learning rate η/l."""
    _check_l(l)
    return lr / l


def svag_steps(steps: int, l) -> int:
    """l times as many steps (rounded to the nearest integer, for a non-integer l)."""
    _check_l(l)
    return int(round(steps * l))


def svag_milestones(milestones, l) -> tuple[int, ...]:
    """Schedule milestones (in steps) scaled by l, as ``svag_steps``."""
    return tuple(svag_steps(m, l) for m in milestones)


def svag_schedule(schedule: Callable, l) -> Callable:
    """The optax schedule for SVAG: step k gets η(k/l)/l (time stretched by l, LR divided by l).

    For a piecewise-constant schedule this moves every boundary m to m·l (``svag_milestones``).
    """
    _check_l(l)
    return lambda count: schedule(count / l) / l


def svag_batch_size(batch_size: int, variant: str = "sde1") -> int:
    """Examples a step draws: 2B for sde1 (two halves), B for sde2."""
    _check_variant(variant)
    return 2 * batch_size if variant == "sde1" else batch_size


def rademacher(key, dtype=None):
    """One sign r = ±1 with probability 1/2 each."""
    dtype = dtype or jnp.result_type(float)
    return jnp.where(jax.random.bernoulli(key), 1.0, -1.0).astype(dtype)


def sde2_factor(l, key, dtype=None):
    """1 + √(l−1)·r, r Rademacher: the sde2 multiplier of the step's loss (exactly 1 at l = 1)."""
    _check_l(l)
    return 1 + _sqrt(l - 1) * rademacher(key, dtype)


def svag_example_weights(l, batch_size: int, variant: str = "sde1", key=None, dtype=None):
    """Per-example weights w with ``weighted_loss(ℓ, w)`` = the SVAG loss L̃.

    sde1: shape (2B,), 2·c1 on the first B examples and 2·c2 on the last B (mean over 2B of
    w ⊙ ℓ = c1·L_γ1 + c2·L_γ2; at l = 1 the weights are exactly 2.0 and 0.0).
    sde2: shape (B,), every weight 1 + √(l−1)·r with one Rademacher r (``key`` required).
    """
    _check_variant(variant)
    dtype = dtype or jnp.result_type(float)
    if variant == "sde1":
        c1, c2 = svag_coefficients(l)
        return jnp.concatenate([jnp.full((batch_size,), 2 * c1, dtype), jnp.full((batch_size,), 2 * c2, dtype)])
    if key is None:
        raise ValueError("sde2 draws a Rademacher sign: pass key")
    return jnp.full((batch_size,), sde2_factor(l, key, dtype), dtype)


def weighted_loss(per_example_losses, weights):
    """mean(w ⊙ ℓ) over the examples: (1/n) Σ_i w_i ℓ_i.

    With SVAG weights this is c1·L_γ1 + c2·L_γ2, with noisy-GD weights (1/N) Σ δ_i ℓ_i, with all
    weights 1 the plain mean loss. Per-example losses may carry trailing axes (e.g. positions),
    which are averaged too; ``weights`` has one entry per example.
    """
    losses = jnp.asarray(per_example_losses)
    weights = jnp.asarray(weights)
    w = jnp.reshape(weights, weights.shape + (1,) * (losses.ndim - 1)).astype(losses.dtype)
    return jnp.mean(w * losses)


def _halves(batch, batch_size):
    first = jax.tree_util.tree_map(lambda a: a[:batch_size], batch)
    second = jax.tree_util.tree_map(lambda a: a[batch_size:2 * batch_size], batch)
    return first, second


def svag_loss(loss_fn: Callable, params, batch, l, *, variant: str = "sde1", key=None, has_aux: bool = False):
    """The SVAG objective L̃(params) from ``loss_fn(params, batch) -> mean loss`` (or
    ``(loss, aux)`` with ``has_aux``), so that ``jax.grad(svag_loss, ...)`` is the SVAG gradient.

    sde1: ``batch`` is a pytree whose leaves have leading axis 2B; ``loss_fn`` runs on each half
    separately (BatchNorm sees B examples, as SGD's would), L̃ = c1·L_γ1 + c2·L_γ2. ``l`` must be
    a Python number: when c2 == 0.0 (l = 1) the second half is not evaluated and the result is
    ``loss_fn(params, first half)`` itself, bit-identical to SGD on that half.
    sde2: ``batch`` has leading axis B; L̃ = (1 + √(l−1)·r)·L_γ, r drawn from ``key``; at l = 1
    the loss is returned unmultiplied.
    ``aux`` (with ``has_aux``) is the first half's (sde1) or the batch's (sde2).
    """
    _check_variant(variant)
    _check_l(l)
    call = loss_fn if has_aux else (lambda p, b: (loss_fn(p, b), None))

    def out(loss, aux):
        return (loss, aux) if has_aux else loss

    if variant == "sde1":
        leaves = jax.tree_util.tree_leaves(batch)
        size = leaves[0].shape[0]
        if size % 2:
            raise ValueError(f"sde1 needs a batch of 2B examples, got {size}")
        first, second = _halves(batch, size // 2)
        c1, c2 = svag_coefficients(l)
        loss1, aux = call(params, first)
        if c2 == 0.0:
            return out(loss1, aux)
        loss2, _aux2 = call(params, second)
        return out(c1 * loss1 + c2 * loss2, aux)
    if key is None:
        raise ValueError("sde2 draws a Rademacher sign: pass key")
    loss, aux = call(params, batch)
    if l == 1:
        return out(loss, aux)
    return out(sde2_factor(l, key, loss.dtype) * loss, aux)


# --- noisy gradient descent -----------------------------------------------------------------------


def noisy_gd_weights(key, n: int, batch_size: int, dtype=None):
    """Noisy gradient descent's per-example weights δ_i = 1 + √(n/B)·(z_i − z̄), z ~ N(0, I_n).

    Use with ``weighted_loss`` over the same fixed n examples every step and a fresh ``key`` each
    step: the gradient is the full-batch gradient plus Gaussian noise of covariance exactly
    Σ_n/B (Σ_n the 1/n per-example gradient covariance over the n examples; module docstring).
    Σ δ_i = n up to rounding.
    """
    dtype = dtype or jnp.result_type(float)
    z = jax.random.normal(key, (n,), dtype)
    return 1 + math.sqrt(n / batch_size) * (z - jnp.mean(z))


# --- LSR noise statistics ---------------------------------------------------------------------------


def _stats(n_batch, g, batch_size):
    n = batch_size * n_batch
    return {"G": g, "N": n, "N_batch": n_batch, "ratio": n_batch / g}


def noise_statistics(per_batch_grads, full_grad=None, batch_size: int = 1, *, full_grad_batch_size=None):
    """G = ‖∇L‖², N = tr Σ and the ratio N/(B·G) from M minibatch gradients (rows of
    ``per_batch_grads``, shape (M, d), each the mean gradient of an independent batch of B).

    Estimator (all terms unbiased; the ratio is their quotient):

    - ``N_batch`` = (1/(M−1)) Σ_m ‖g_m − ḡ‖², the trace of the minibatch-gradient covariance
      (sample covariance with 1/(M−1), around the sample mean ḡ); ``N`` = B·N_batch = tr Σ
      (exact for with-replacement batches; for without-replacement batches from N_data examples
      tr Σ is underestimated by the factor (N_data−B)/(N_data−1)).
    - ``G``: with ``full_grad`` (the full-batch gradient, or an independent large-sample
      estimate), ‖full_grad‖²; if that estimate is itself the mean over S examples, pass
      ``full_grad_batch_size=S`` and its own noise N/S is subtracted. Without ``full_grad``, ∇L
      is estimated by ḡ (M·B examples) and G = ‖ḡ‖² − N_batch/M, removing ḡ's own noise.
      A bias-corrected G can come out ≤ 0 when the gradient is buried in noise.
    - ``ratio`` = N/(B·G) = N_batch/G.

    Returns a dict with ``G``, ``N``, ``N_batch`` and ``ratio`` (scalars).
    """
    grads = jnp.asarray(per_batch_grads)
    m = grads.shape[0]
    if m < 2:
        raise ValueError("noise_statistics needs at least two minibatch gradients")
    mean = jnp.mean(grads, axis=0)
    n_batch = jnp.sum((grads - mean) ** 2) / (m - 1)
    return _stats(n_batch, _signal(mean, m, n_batch, full_grad, batch_size, full_grad_batch_size), batch_size)


def _signal(mean, m, n_batch, full_grad, batch_size, full_grad_batch_size):
    if full_grad is None:
        return jnp.sum(mean ** 2) - n_batch / m
    g = jnp.sum(jnp.asarray(full_grad) ** 2)
    if full_grad_batch_size:
        g = g - batch_size * n_batch / full_grad_batch_size
    return g


def _flat_rows(tree):
    """Leaves with a leading axis M -> one (M, d) matrix."""
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.concatenate([jnp.reshape(a, (a.shape[0], -1)) for a in leaves], axis=1)


def _flat(tree):
    return jnp.concatenate([jnp.ravel(a) for a in jax.tree_util.tree_leaves(tree)])


def tree_noise_statistics(per_batch_grads, full_grad=None, batch_size: int = 1, *, full_grad_batch_size=None):
    """``noise_statistics`` on pytrees: ``per_batch_grads`` is a gradient pytree whose leaves carry
    a leading axis M (e.g. stacked with ``jax.vmap`` or ``jnp.stack``), ``full_grad`` a gradient
    pytree of the same structure without it (or None)."""
    full = None if full_grad is None else _flat(full_grad)
    return noise_statistics(_flat_rows(per_batch_grads), full, batch_size, full_grad_batch_size=full_grad_batch_size)


# streaming form for a window too large to stack: Welford's update of the mean and of the summed
# squared deviations (no cancellation between Σ‖g‖² and M‖ḡ‖²)


def noise_accumulator_init(grad_tree):
    """Empty accumulator for gradients shaped like ``grad_tree``: count, running mean, Σ‖g_m − ḡ‖²."""
    zeros = jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, jnp.promote_types(a.dtype, jnp.float32)), grad_tree)
    return {"count": jnp.zeros([], jnp.int32), "mean": zeros, "m2": jnp.zeros([], jnp.result_type(float))}


def noise_accumulator_update(state, grad_tree):
    """Add one minibatch gradient (Welford)."""
    count = state["count"] + 1
    delta = jax.tree_util.tree_map(lambda g, mu: g.astype(mu.dtype) - mu, grad_tree, state["mean"])
    mean = jax.tree_util.tree_map(lambda mu, d: mu + d / count.astype(mu.dtype), state["mean"], delta)
    inc = sum(jnp.sum(d * (g.astype(mu.dtype) - mu)).astype(state["m2"].dtype)
              for d, g, mu in zip(jax.tree_util.tree_leaves(delta), jax.tree_util.tree_leaves(grad_tree),
                                  jax.tree_util.tree_leaves(mean)))
    return {"count": count, "mean": mean, "m2": state["m2"] + inc}


def noise_accumulator_finalize(state, batch_size: int, full_grad=None, *, full_grad_batch_size=None):
    """The ``noise_statistics`` dict from an accumulator of M ≥ 2 gradients (same estimator)."""
    m = state["count"].astype(state["m2"].dtype)
    n_batch = state["m2"] / (m - 1)
    mean = _flat(state["mean"])
    full = None if full_grad is None else _flat(full_grad)
    return _stats(n_batch, _signal(mean, m, n_batch, full, batch_size, full_grad_batch_size), batch_size)
