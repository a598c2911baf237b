"""The SAM family's perturbations and buffers, as pure functions of pytrees.

Sharpness-aware steps evaluate the gradient at a perturbed point θ+ε and update θ with it. The
modes differ only in how ε is built and which running buffers they keep (docs/algorithms.md,
"SAM modes", whose mode table is the contract):

- ``base_sam``:   ε = ρ·D(g_c)
- ``base_fsam``:  ε = ρ·D(g_c − gbar) (first SAM step: ρ·D(g_c)); then gbar ← β·gbar + (1−β)·g_c
- ``past_fsam``:  ε = ρ·D(g_last − gbar) from the *previous* steps' gradients (first SAM step: ε = 0),
  so one gradient per step; then gbar ← β·gbar + (1−β)·g_last_old and g_last ← g_p
- ``asam``:       ε = ρ·s²⊙g_c / √(‖s⊙g_c‖² + 1e-12), s = |w| + η (1 on leaves named ``bias``)
- ``fisher_sam``: u = g_c/(g_c² + η), ε = ρ·u / √(⟨g_c, u⟩ + 1e-12)

D(v) is a transform (``perturb_mode``) followed by a normalisation (``norm_mode``); see
``direction``. Everything here takes explicit arguments (no config objects), P enters only as a
callable ``precond(tree) -> tree``, and nothing is differentiated through: the runner wraps ε in
``stop_gradient``.

**"Step 0".** The mode table says base_fsam uses v = g_c and past_fsam ε = 0 "at step 0". We read that
as *the first SAM step*, counted by ``buffers["count"]`` (SAM steps taken; in the train state and
checkpointed): with ``start_sam_after_step=N`` the first SAM step is loop step N, and after a resume
the counter, not the loop step, says whether the buffers are live. Since the buffers start at zero
and stay frozen until SAM starts, the general formulas give the same v there (g_c − 0, 0 − 0); the
explicit flag states the rule instead of relying on that, and pins past_fsam's first ε to exactly 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# the config layer owns the mode lists (llqr.config.families); this module dispatches on them
from ..config.families import NORM_MODES, PERTURB_MODES, SAM_MODES

STABILISER = 1e-12  # asam's and fisher_sam's fixed denominator guard (gbar_eps is for the D(v) modes)


# --- small tree algebra -------------------------------------------------------------------------


def tree_dot(a, b):
    """⟨a, b⟩ summed over every leaf, accumulated in float32."""
    parts = [jnp.sum(x.astype(jnp.float32) * y.astype(jnp.float32))
             for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))]
    return sum(parts, jnp.zeros([], jnp.float32))


def tree_scale(tree, c):
    return jax.tree_util.tree_map(lambda x: (x * c).astype(x.dtype), tree)


def tree_axpy(a, x, y):
    """a·x + y."""
    return jax.tree_util.tree_map(lambda u, v: (a * u + v).astype(v.dtype), x, y)


def unit(tree, eps: float):
    """tree / √(⟨tree, tree⟩ + eps): a unit vector, and exactly 0 for a zero tree."""
    return tree_scale(tree, jax.lax.rsqrt(tree_dot(tree, tree) + eps))


def zeros_like(tree):
    return jax.tree_util.tree_map(jnp.zeros_like, tree)


def _top_level(tree) -> dict:
    if not isinstance(tree, dict) or not tree:
        raise ValueError("layer_* norm modes need a dict of top-level parameter groups")
    return tree


# --- D(v) -----------------------------------------------------------------------------------------


def transform(v, perturb_mode: str, precond, eps: float = 1e-12):
    """T(v): ``ema_grad`` → v; ``ema_precond_grad`` → P·v; ``ema_direction`` → unit(P·v) (legacy,
    with the same ``eps`` as the normalisation). The names are historical: none is an EMA here."""
    if perturb_mode == "ema_grad":
        return v
    if perturb_mode == "ema_precond_grad":
        return precond(v)
    if perturb_mode == "ema_direction":
        return unit(precond(v), eps)
    raise ValueError(f"unknown perturb_mode {perturb_mode!r}; expected one of {PERTURB_MODES}")


def normalize(v, t, norm_mode: str, eps: float):
    """Scale T to the perturbation radius 1 in the chosen norm.

    ``euclidean``: T/√(⟨T,T⟩+e), the Euclidean unit vector. ``matrix_norm``: T/√(⟨v,T⟩+e), i.e. with
    T = P·v the step of P⁻¹-norm 1 (the natural radius when P is a curvature inverse). The ``layer_*``
    variants do the same per top-level parameter group and divide by √L (L groups), so each group
    gets an equal share and the whole ε still has norm 1 (euclidean) overall.
    """
    if norm_mode in ("euclidean", "matrix_norm"):
        ref = t if norm_mode == "euclidean" else v
        return tree_scale(t, jax.lax.rsqrt(tree_dot(ref, t) + eps))
    if norm_mode in ("layer_euclidean", "layer_matrix_norm"):
        t_layers = _top_level(t)
        ref = t_layers if norm_mode == "layer_euclidean" else _top_level(v)
        inv_sqrt_l = 1.0 / jnp.sqrt(jnp.float32(len(t_layers)))
        return {k: tree_scale(t_layers[k], jax.lax.rsqrt(tree_dot(ref[k], t_layers[k]) + eps) * inv_sqrt_l)
                for k in t_layers}
    raise ValueError(f"unknown norm_mode {norm_mode!r}; expected one of {NORM_MODES}")


def direction(v, *, perturb_mode: str, norm_mode: str, eps: float, precond):
    """D(v) = normalize(v, T(v)): the unit perturbation direction of the base modes."""
    return normalize(v, transform(v, perturb_mode, precond, eps), norm_mode, eps)


# --- the per-mode perturbations ------------------------------------------------------------------


def _is_bias(path) -> bool:
    last = path[-1] if path else None
    return str(getattr(last, "key", getattr(last, "name", last))) == "bias"


def asam_scale(params, eta: float):
    """s = |w| + η per entry; 1 on leaves whose own name is ``bias`` (BatchNorm ``scale`` is *not*
    exempt, as in the reference)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, w: jnp.ones_like(w) if _is_bias(path) else jnp.abs(w) + eta, params)


def asam_perturbation(params, g, rho, eta: float):
    """Adaptive SAM: ε = ρ·s²⊙g / √(‖s⊙g‖² + 1e-12), the SAM step taken in the coordinates w/s."""
    s = asam_scale(params, eta)
    sg = jax.tree_util.tree_map(lambda a, b: a * b, s, g)
    scale = rho * jax.lax.rsqrt(tree_dot(sg, sg) + STABILISER)
    return jax.tree_util.tree_map(lambda a, b: (a * b * scale).astype(b.dtype), s, sg)


def fisher_perturbation(g, rho, eta: float):
    """Fisher SAM: u = g/(g² + η), ε = ρ·u / √(⟨g, u⟩ + 1e-12), with g² the squared batch-mean gradient
    as the diagonal Fisher.

    This is the reference's g/(g²+η) form (a damped inverse-Fisher direction); the Fisher-SAM paper
    instead scales by 1/(1 + η·g²). We keep the reference's choice so results are comparable.
    """
    u = jax.tree_util.tree_map(lambda x: x / (x * x + eta), g)
    return tree_scale(u, rho * jax.lax.rsqrt(tree_dot(g, u) + STABILISER))


# --- buffers --------------------------------------------------------------------------------------


def init_buffers(mode: str, params) -> dict:
    """Zero buffers for ``mode``: ``count`` (SAM steps taken) always, ``gbar`` for the FSAM modes,
    ``g_last`` for past_fsam. Modes without buffers carry none (the reference carries both for
    every mode, unused)."""
    if mode not in SAM_MODES:
        raise ValueError(f"unknown sam_mode {mode!r}; expected one of {SAM_MODES}")
    out = {"count": jnp.zeros([], jnp.int32)}
    if mode in ("base_fsam", "past_fsam"):
        out["gbar"] = zeros_like(params)
    if mode == "past_fsam":
        out["g_last"] = zeros_like(params)
    return out


def ema(gbar, target, beta, *, direction_mode: bool = False, eps: float = 1e-12):
    """β·gbar + (1−β)·target; with ``ema_direction`` the *result* is unit-normalised (gbar then
    tracks a direction, not a magnitude), as the reference does."""
    new = tree_axpy(1.0 - beta, target, tree_scale(gbar, beta))
    return unit(new, eps) if direction_mode else new


def first_step(buffers):
    """True at the first SAM step (see the module docstring)."""
    return buffers["count"] == 0


def perturbation(mode: str, *, params, buffers, g_c, rho, precond, perturb_mode: str, norm_mode: str,
                 gbar_eps: float, asam_eta: float, fisher_sam_eta: float):
    """ε for ``mode`` (``g_c``, the centre gradient, is ignored by past_fsam, which needs none)."""
    base = dict(perturb_mode=perturb_mode, norm_mode=norm_mode, eps=gbar_eps, precond=precond)
    if mode == "base_sam":
        return tree_scale(direction(g_c, **base), rho)
    if mode == "base_fsam":
        first = first_step(buffers)
        v = jax.tree_util.tree_map(lambda g, b: jnp.where(first, g, g - b), g_c, buffers["gbar"])
        return tree_scale(direction(v, **base), rho)
    if mode == "past_fsam":
        v = jax.tree_util.tree_map(lambda a, b: a - b, buffers["g_last"], buffers["gbar"])
        live = jnp.where(first_step(buffers), 0.0, rho).astype(jnp.float32)
        return tree_scale(direction(v, **base), live)
    if mode == "asam":
        return asam_perturbation(params, g_c, rho, asam_eta)
    if mode == "fisher_sam":
        return fisher_perturbation(g_c, rho, fisher_sam_eta)
    raise ValueError(f"unknown sam_mode {mode!r}; expected one of {SAM_MODES}")


def update_buffers(mode: str, buffers, *, g_c, g_p, beta: float, perturb_mode: str, gbar_eps: float):
    """The buffers after a SAM step (the mode table's last column); ``count`` always advances.

    base_fsam: gbar ← β·gbar + (1−β)·g_c (unit-normalised under ema_direction). past_fsam:
    gbar ← β·gbar + (1−β)·g_last_old, g_last ← g_p (the gradient this step trained on). gbar thus lags
    g_last by one step, which is what makes v = g_last − gbar a noise estimate.
    """
    out = dict(buffers, count=buffers["count"] + 1)
    if mode == "base_fsam":
        out["gbar"] = ema(buffers["gbar"], g_c, beta, direction_mode=perturb_mode == "ema_direction", eps=gbar_eps)
    elif mode == "past_fsam":
        out["gbar"] = ema(buffers["gbar"], buffers["g_last"], beta)
        out["g_last"] = jax.tree_util.tree_map(lambda g, old: g.astype(old.dtype), g_p, buffers["g_last"])
    return out
