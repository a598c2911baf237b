"""Exact second-order references for small models: dense Hessian/Fisher solves.

Used by the oracle tests and the "exact vs relaxed" checks: the relaxed LLQR fit should approach
-(H_D + λI)^-1 g, whose negation (the preconditioned gradient) these functions return.
"""

from __future__ import annotations

import jax
import jax.flatten_util
import jax.numpy as jnp

from .divergences import terminal_cost
from .losses import smoothed_cross_entropy
from .lqr import curvature_objective


def curvature_matrix(log_probs_fn, params, x, labels, *, divergence="ngd", order=0.5, label_smoothing=0.0,
                     ignore_index=None):
    """(H_D, g, unravel) with H_D the dense Hessian of the divergence-composed network (or loss)."""
    flat, unravel = jax.flatten_util.ravel_pytree(params)

    def loss(p):
        return smoothed_cross_entropy(log_probs_fn(p, x), labels, label_smoothing, ignore_index)

    objective = curvature_objective(terminal_cost(divergence, order), log_probs_fn, params, x, loss)
    flat_fn = lambda f: (lambda v: f(unravel(v)))  # noqa: E731
    return jax.hessian(flat_fn(objective))(flat), jax.grad(flat_fn(loss))(flat), unravel


def preconditioned_gradient(log_probs_fn, params, x, labels, *, divergence="ngd", damping=0.0, **kw):
    """(H_D + λI)^-1 g as a params-shaped pytree: exact Newton (newton) or natural gradient (ngd,
    with the Fisher summed over the batch as the LQR defines it)."""
    H, g, unravel = curvature_matrix(log_probs_fn, params, x, labels, divergence=divergence, **kw)
    return unravel(jnp.linalg.solve(H + damping * jnp.eye(H.shape[0], dtype=H.dtype), g))


def exact_inverse(log_probs_fn, params, x, labels, *, divergence="ngd", damping=0.0, normalize_grad=False, **kw):
    """(P*, cost): P* = (H_D + λI)^-1 as a dense matrix over the flattened params (NaN-free), and
    cost(P) = J(P) = 1/2 (Pg)^T (H_D + λI)(Pg) - g^T P g, the relaxed objective P* minimises."""
    H, g, _ = curvature_matrix(log_probs_fn, params, x, labels, divergence=divergence, **kw)
    if normalize_grad:
        g = g / jnp.maximum(jnp.linalg.norm(g), 1e-30)
    Hd = H + damping * jnp.eye(H.shape[0], dtype=H.dtype)
    inverse = jnp.nan_to_num(jnp.linalg.solve(Hd, jnp.eye(H.shape[0], dtype=H.dtype)), nan=0.0, posinf=0.0,
                             neginf=0.0)

    def cost(P):
        w = P @ g
        return 0.5 * w @ (Hd @ w) - g @ w

    return inverse, cost
