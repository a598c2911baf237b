"""Terminal costs D(z_ref, z) on log-probability outputs, summed over the whole fit batch.

The LQR curvature is the Hessian in θ of θ' -> D(z_ref, f(θ')) at θ' = θ (z_ref held fixed).
For ``ngd`` and ``reverse_kl`` the gradient at the logits vanishes there, so that Hessian is the
exact Fisher/GGN *summed* over the N loss terms; Rényi's log wraps the batch-wide sum, which
gives α times the *mean* Fisher. ``newton`` uses the training loss itself (full Hessian).

The names are ``llqr.config.families.DIVERGENCES`` (the config layer owns the list): ``terminal_cost``
implements every one but the research-only ``RESEARCH_DIVERGENCES``, which the config refuses first.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.scipy.special import logsumexp

from ..config.families import RESEARCH_DIVERGENCES


def ngd(z_ref, z):
    """Cross-entropy of the current predictive against the new one: -sum p_ref * log q."""
    return -jnp.sum(jnp.exp(z_ref) * z)


def reverse_kl(z_ref, z):
    """sum q (log q - log p_ref), q the new predictive."""
    return jnp.sum(jnp.exp(z) * (z - z_ref))


def renyi(order: float):
    """(α-1)^-1 log sum_{n,k} p_ref^α q^(1-α), computed with logsumexp."""
    if order == 1.0:
        raise ValueError("divergence_order_param=1 is the KL limit; use divergence=ngd or reverse_kl")

    def fn(z_ref, z):
        return logsumexp(order * z_ref + (1.0 - order) * z) / (order - 1.0)

    return fn


def terminal_cost(name: str, order: float = 0.5):
    """The divergence function of config ``divergence`` (None for ``newton``: use the loss)."""
    if name == "newton":
        return None
    if name == "ngd":
        return ngd
    if name == "reverse_kl":
        return reverse_kl
    if name == "renyi":
        return renyi(order)
    if name in ("stable_renyi", "renyi_half"):  # the reference never passes an order to stable_renyi
        return renyi(0.5)
    if name == "renyi_2":
        return renyi(2.0)
    if name in RESEARCH_DIVERGENCES:
        raise ValueError(f"divergence {name!r} is research-only in the reference and not implemented here")
    raise ValueError(f"unknown divergence {name!r}")
