"""The layerwise-LQR problem at the current parameters, and the relaxed fit of P to it.

By the second-order adjoint identity, the LQR cost of the linearised layer chain with terminal
divergence D and Hamiltonian stage terms equals J(u) = 1/2 u^T (H_D + λI) u + g^T u, with H_D the
Hessian in θ of θ' -> D(z_ref, f(θ')) (or of the loss, for ``newton``). We evaluate (H_D + λI)u as
one curvature-vector product of the whole network, linearised once per fit (so each inner step
costs one linear forward-and-backward), and restrict u = -P g, fitting P's structured parameters
by a few clipped first-order steps on J(P) = 1/2 (Pg)^T (H_D + λI)(Pg) - g^T P g.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ..train.losses import smoothed_cross_entropy
from . import structures
from .divergences import terminal_cost


class Problem(NamedTuple):
    grad: object  # g: mean-loss gradient on the fit batch (pytree like params)
    curvature: Callable  # v -> (H_D + λI) v


def tree_vdot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


SEPARABLE = ("ngd", "reverse_kl", "newton")  # curvature is a sum over samples (newton: loss-weighted)


def curvature_objective(cost, log_probs_fn, params, x, loss):
    """The function of θ' whose Hessian at θ is H_D: the loss for newton (``cost`` None), else
    D(z_ref, f(θ')) with z_ref = f(θ) held fixed."""
    if cost is None:
        return loss
    z_ref = jax.lax.stop_gradient(log_probs_fn(params, x))
    return lambda p: cost(z_ref, log_probs_fn(p, x))


def _chunks(n: int, size: int | None):
    size = n if not size or size >= n else size
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def make_problem(log_probs_fn, params, x, labels, *, divergence="ngd", order=0.5, label_smoothing=0.0, damping=0.0,
                 normalize_grad=False, chunk_size=None, cache=True, ignore_index=None) -> Problem:
    """The LQR problem of ``log_probs_fn(params, x) -> (N, ..., K)`` (the inference-mode network).

    ``x`` may be a tuple of arrays (translation: source, shifted target) and the outputs may have
    extra position axes; positions labelled ``ignore_index`` leave the loss, and the caller zeroes
    their log-prob rows so that they add no divergence curvature either.

    ``chunk_size`` splits the fit batch: g = sum_c (w_c/W) g_c and the curvature is the sum of the
    chunks' curvatures (newton: each chunk's mean loss weighted by w_c/W), which is exact because
    ngd's curvature is a sum over samples and newton's a mean. ``cache`` linearises each chunk once
    per fit (the reference's cached_exact); without it every product is recomputed (low memory).
    """
    n = labels.shape[0]
    slices = _chunks(n, chunk_size)
    if len(slices) > 1 and divergence not in SEPARABLE:
        raise ValueError(f"divergence {divergence!r} is not a sum over samples; chunked fits need one of {SEPARABLE}")
    cost = terminal_cost(divergence, order)
    grads, products = [], []
    for sl in slices:
        xc, yc = jax.tree_util.tree_map(lambda a, sl=sl: a[sl], x), labels[sl]
        weight = (sl.stop - sl.start) / n

        def loss(p, xc=xc, yc=yc, weight=weight):
            return weight * smoothed_cross_entropy(log_probs_fn(p, xc), yc, label_smoothing, ignore_index)

        grads.append(jax.grad(loss)(params))
        objective = curvature_objective(cost, log_probs_fn, params, xc, loss)
        if cache:
            products.append(jax.linearize(jax.grad(objective), params)[1])
        else:
            products.append(lambda v, f=objective: jax.jvp(jax.grad(f), (params,), (v,))[1])
    g = _tree_sum(grads)

    def curvature(v):
        hv = _tree_sum([prod(v) for prod in products])
        return hv if not damping else jax.tree_util.tree_map(lambda a, b: a + damping * b, hv, v)

    if normalize_grad:
        norm = jnp.sqrt(tree_vdot(g, g))
        g = jax.tree_util.tree_map(lambda t: t / jnp.maximum(norm, 1e-30), g)
    return Problem(g, curvature)


def _tree_sum(trees):
    return trees[0] if len(trees) == 1 else jax.tree_util.tree_map(lambda *xs: sum(xs), *trees)


def lqr_cost(problem: Problem, u):
    """J(u) = 1/2 u^T (H_D + λI) u + g^T u."""
    return 0.5 * tree_vdot(u, problem.curvature(u)) + tree_vdot(problem.grad, u)


def precond_cost_and_grad(problem: Problem, structure: str, blocks, layer_of=None):
    """J(P) and dJ/d(blocks) with u = -P g: dJ/dw = (H+λ)w - g for w = P g, pulled back to P."""
    w, pullback = jax.vjp(lambda b: structures.apply_blocks(structure, b, problem.grad, layer_of), blocks)
    hw = problem.curvature(w)
    value = 0.5 * tree_vdot(w, hw) - tree_vdot(problem.grad, w)
    (grad_blocks,) = pullback(jax.tree_util.tree_map(lambda a, b: a - b, hw, problem.grad))
    return value, grad_blocks


def clip_by_group_norm(max_norm: float, groups) -> optax.GradientTransformation:
    """The reference's inner clip: the update arrays of each group (``groups``: a pytree like the
    updates naming each array's group) rescaled together by max_norm / max(max_norm, group norm)."""

    def update(updates, state, params=None):
        del params
        leaves, treedef = jax.tree_util.tree_flatten(updates)
        ids = jax.tree_util.tree_leaves(groups)
        squares: dict = {}
        for i, u in zip(ids, leaves):
            squares[i] = squares.get(i, 0.0) + jnp.sum(u * u)
        scale = {i: max_norm / jnp.maximum(max_norm, jnp.sqrt(sq)) for i, sq in squares.items()}
        return jax.tree_util.tree_unflatten(treedef, [u * scale[i] for i, u in zip(ids, leaves)]), state

    return optax.GradientTransformation(lambda _p: optax.EmptyState(), update)


def inner_solver(name: str, lr, momentum: float, clip_norm: float, groups) -> optax.GradientTransformation:
    if name == "momentum":
        solver = optax.sgd(lr, momentum=momentum)
    elif name == "sgd":
        solver = optax.sgd(lr)
    elif name == "adam":
        solver = optax.adam(lr)
    else:
        raise ValueError(f"unknown precond_solver {name!r}")
    return optax.chain(clip_by_group_norm(clip_norm, groups), solver)


def _finite(tree):
    return jax.tree_util.tree_map(lambda x: jnp.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0), tree)


def fit_blocks(problem: Problem, structure: str, start, *, steps: int, lr, solver="momentum", momentum=0.9,
               clip_norm=5.0, layer_of=None):
    """``steps`` clipped solver steps on J(P) from ``start``; returns (blocks, costs per step).

    The clip acts on the reference's block arrays (``structures.clip_groups``): a diagonal block
    is clipped per controlled layer (``layer_of``: see ``structures.layer_labels``)."""
    opt = inner_solver(solver, lr, momentum, clip_norm, structures.clip_groups(structure, start, layer_of))

    def step(carry, _):
        blocks, opt_state = carry
        value, grads = precond_cost_and_grad(problem, structure, blocks, layer_of)
        updates, opt_state = opt.update(_finite(grads), opt_state, blocks)
        return (optax.apply_updates(blocks, updates), opt_state), value

    (blocks, _), costs = jax.lax.scan(step, (start, opt.init(start)), None, length=steps)
    return _finite(blocks), costs


def blend(old, new, ema_decay):
    """blocks <- d * old + (1 - d) * new, leafwise (on the factors for factored structures)."""
    return jax.tree_util.tree_map(lambda o, n: ema_decay * o + (1.0 - ema_decay) * n, old, new)
