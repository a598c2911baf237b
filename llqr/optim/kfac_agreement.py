"""How close IKFAC's preconditioned direction is to the KFAC direction it approximates (pure math).

IKFAC (``singd.scale_by_singd(kfac_like=True)``) never inverts a matrix: each refresh moves K, C
by K ← K(I − β1 m_K), m_K = ½(Kᵀ A K + λ KᵀK − I), whose fixed point is K Kᵀ = (A + λI)⁻¹ (and
C Cᵀ = (G + λI)⁻¹). The SINGD paper (Lin et al. 2024, §3, the IKFAC theorem; its text [not
retrieved] here: the statement is the paper's as we know it, the fixed point is what our SINGD tests
check) makes the step, to first order in β1, KFAC's moving average S_K ← (1 − β1) S_K + β1 (A + λI)
with K Kᵀ = S_K⁻¹:
the damping λ is added to each factor whole (not √λ per factor, no π split), and β1 plays the
moving-average weight. So the KFAC that IKFAC approximates preconditions a layer's gradient X as

    d_kfac = (A + λI)⁻¹ X (G + λI)⁻¹          (``scale_by_kfac(damping_mode="plain")``)

and with the factors of one batch (moving-average decay 0) this is exactly IKFAC's fixed point on
that batch. ``layer_directions`` pairs it with IKFAC's K Kᵀ X C Cᵀ from the optimizer state, on
the same A, G and X; ``agreement`` scores the pairs over all layers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .singd import ScaleBySINGDState, _flat, _layer_factors, _layers, _matrix_grads, precondition_layer


def kfac_direction(A, G, X, damping: float):
    """(A + λI)⁻¹ X (G + λI)⁻¹ by two Cholesky solves, in float32."""
    A, G, X = (jnp.asarray(M, jnp.float32) for M in (A, G, X))

    def solve(M, B):
        L = jax.scipy.linalg.cho_factor(M + damping * jnp.eye(M.shape[0], dtype=M.dtype), lower=True)
        return jax.scipy.linalg.cho_solve(L, B)

    return solve(G, solve(A, X).T).T  # G + λI is symmetric: X' (G + λI)⁻¹ = ((G + λI)⁻¹ X'ᵀ)ᵀ


def find_singd_state(opt_state) -> ScaleBySINGDState | None:
    """The (first) SINGD/IKFAC state anywhere in an optax chain's state, or None."""
    found = [s for s in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: isinstance(x, ScaleBySINGDState))
             if isinstance(s, ScaleBySINGDState)]
    return found[0] if found else None


def layer_directions(state: ScaleBySINGDState, grads, factors) -> dict[str, tuple]:
    """{layer: (d_ikfac, d_kfac)} for every layer the state preconditions and ``factors`` cover.

    ``grads``: the gradient, a tree shaped like the params (each layer's kernel and bias are read as
    one (d_in[+1], d_out) matrix X, as the optimizer reads them); ``factors``: {kernel path: (A, G)}
    as ``capture.kronecker_factors`` gives them. d_ikfac is K Kᵀ X C Cᵀ with the state's K, C (what
    the optimizer applies); d_kfac uses λ = the state's damping. Both in float32.
    """
    layers = _layers(grads)
    matrices = _matrix_grads(layers, _flat(grads))
    out = {}
    for k, (A, G) in _layer_factors(layers, factors).items():
        X = matrices[k].astype(jnp.float32)
        sk, sc = state.spec.structs(layers[k])
        kc = jax.tree_util.tree_map(lambda s: s.astype(jnp.float32), state.layers[k])
        out[k] = (precondition_layer(sk, sc, kc, X), kfac_direction(A, G, X, state.spec.damping))
    return out


def agreement(pairs: dict[str, tuple]) -> dict:
    """cos: the cosine of the two directions over all layers (one vector); rel: ‖d_ikfac − d_kfac‖ /
    ‖d_kfac‖ over all layers; cos_min: the worst layer's cosine. Scalars (jnp)."""
    tiny = jnp.finfo(jnp.float32).tiny
    dots, n_ours, n_ref, n_diff, per_layer = 0.0, 0.0, 0.0, 0.0, []
    for ours, ref in pairs.values():
        dot, a, b = jnp.vdot(ours, ref), jnp.vdot(ours, ours), jnp.vdot(ref, ref)
        dots, n_ours, n_ref = dots + dot, n_ours + a, n_ref + b
        n_diff = n_diff + jnp.sum(jnp.square(ours - ref))
        per_layer.append(dot / jnp.maximum(jnp.sqrt(a * b), tiny))
    return {"cos": dots / jnp.maximum(jnp.sqrt(n_ours * n_ref), tiny),
            "rel": jnp.sqrt(n_diff) / jnp.maximum(jnp.sqrt(n_ref), tiny),
            "cos_min": jnp.min(jnp.stack(per_layer))}
