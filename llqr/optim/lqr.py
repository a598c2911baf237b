"""The layerwise-LQR problem at the current parameters, and the relaxed fit of P to it.

By the second-order adjoint identity, the LQR cost of the linearised layer chain with terminal
divergence D and Hamiltonian stage terms equals J(u) = 1/2 u^T (H_D + λI) u + g^T u, with H_D the
Hessian in θ of θ' -> D(z_ref, f(θ')) (or of the loss, for ``newton``). We evaluate (H_D + λI)u as
one curvature-vector product of the whole network and restrict u = -P g, fitting P's structured
parameters by a few clipped first-order steps on J(P) = 1/2 (Pg)^T (H_D + λI)(Pg) - g^T P g.

The product is computed one of three ways (``make_problem``): the whole batch linearised once per
fit (each inner step one linear forward-and-backward; the batch's residuals live for the fit), the
whole batch by jvp-of-grad per product (nothing cached), or a loop over chunks of the batch, each
chunk's product recomputed by jvp-of-grad on every call, so that memory follows the chunk.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from ..config.families import PRECOND_SOLVERS, SEPARABLE_DIVERGENCES
from . import structures
from .divergences import terminal_cost
from .losses import smoothed_cross_entropy


class Problem(NamedTuple):
    grad: object  # g: mean-loss gradient on the fit batch (pytree like params)
    curvature: Callable  # v -> (H_D + λI) v


def tree_vdot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def curvature_objective(cost, log_probs_fn, params, x, loss):
    """The function of θ' whose Hessian at θ is H_D: the loss for newton (``cost`` None), else
    D(z_ref, f(θ')) with z_ref = f(θ) held fixed."""
    if cost is None:
        return loss
    z_ref = jax.lax.stop_gradient(log_probs_fn(params, x))
    return lambda p: cost(z_ref, log_probs_fn(p, x))


def _share(chunk_labels, labels, ignore_index):
    """w_c/W: the chunk's loss terms over the batch's, its mean loss's weight in the batch mean
    (exact with ``ignore_index`` too, where chunks hold different numbers of loss terms)."""
    if ignore_index is None:
        return chunk_labels.size / labels.size
    return jnp.sum(chunk_labels != ignore_index) / jnp.maximum(jnp.sum(labels != ignore_index), 1)


def _chunk_sum(fn, batch, size: int):
    """sum_c fn(*chunk_c) over consecutive chunks of ``size`` rows of ``batch`` (a tuple of pytrees).

    The full chunks run in a ``fori_loop`` that slices its chunk from the batch, so only one
    chunk's temporaries are live at a time (an unrolled sum would let XLA keep them all); a last
    chunk that does not divide the batch is added after the loop, so no padding enters the sums."""
    n = jax.tree_util.tree_leaves(batch)[0].shape[0]
    count, rest = divmod(n, size)
    rows = lambda start, length: jax.tree_util.tree_map(  # noqa: E731
        lambda a: jax.lax.dynamic_slice_in_dim(a, start, length), batch)
    shape = jax.eval_shape(fn, *rows(0, size))
    zero = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shape)
    add = lambda a, b: jax.tree_util.tree_map(jnp.add, a, b)  # noqa: E731
    total = jax.lax.fori_loop(0, count, lambda i, acc: add(acc, fn(*rows(i * size, size))), zero)
    return add(total, fn(*rows(count * size, rest))) if rest else total


def make_problem(log_probs_fn, params, x, labels, *, divergence="ngd", order=0.5, label_smoothing=0.0, damping=0.0,
                 normalize_grad=False, chunk_size=None, cache=True, remat=False, ignore_index=None) -> Problem:
    """The LQR problem of ``log_probs_fn(params, x) -> (N, ..., K)`` (the inference-mode network).

    ``x`` may be a tuple of arrays (translation: source, shifted target) and the outputs may have
    extra position axes; positions labelled ``ignore_index`` leave the loss, and the caller zeroes
    their log-prob rows so that they add no divergence curvature either.

    ``chunk_size`` splits the fit batch: g = sum_c (w_c/W) g_c and the curvature is the sum of the
    chunks' curvatures (newton: each chunk's mean loss weighted by w_c/W), w_c counting the chunk's
    loss terms, which is exact because ngd's curvature is a sum over samples and newton's a mean.
    Both sums run as a loop over the chunks inside the caller's trace, each product recomputed
    from the chunk's inputs by jvp-of-grad on every call, so the peak memory follows the chunk,
    not the batch. Unchunked, ``cache`` linearises the whole batch once per fit (the reference's
    cached_exact: the fastest products, its residuals held for the fit); without it every product
    is one jvp-of-grad of the whole batch (no residuals kept between products). ``remat`` (our
    lowmem_exact_full) also saves none of the network's intermediates inside a product and
    recomputes them in its backward pass: less memory, more compute. (The reference's optional
    "dots without batch dims" policy kept more here: it raised XLA's temporaries on a small ResNet.)
    """
    if remat:
        log_probs_fn = jax.checkpoint(log_probs_fn, policy=jax.checkpoint_policies.nothing_saveable)
    n = labels.shape[0]
    size = n if not chunk_size or chunk_size >= n else chunk_size
    if size < n and divergence not in SEPARABLE_DIVERGENCES:
        raise ValueError(f"divergence {divergence!r} is not a sum over samples; chunked fits need one of "
                         f"{SEPARABLE_DIVERGENCES}")
    cost = terminal_cost(divergence, order)

    def loss(p, xc, yc):  # the chunk's share of the batch mean loss
        weight = _share(yc, labels, ignore_index)
        return weight * smoothed_cross_entropy(log_probs_fn(p, xc), yc, label_smoothing, ignore_index)

    def gradient(xc, yc):
        return jax.grad(loss)(params, xc, yc)

    def grad_of_objective(xc, yc):
        return jax.grad(curvature_objective(cost, log_probs_fn, params, xc, lambda p: loss(p, xc, yc)))

    def product(xc, yc, v):
        return jax.jvp(grad_of_objective(xc, yc), (params,), (v,))[1]

    if size == n:
        g = gradient(x, labels)
        hvp = jax.linearize(grad_of_objective(x, labels), params)[1] if cache else (lambda v: product(x, labels, v))
    else:
        g = _chunk_sum(gradient, (x, labels), size)
        hvp = lambda v: _chunk_sum(lambda xc, yc: product(xc, yc, v), (x, labels), size)  # noqa: E731

    def curvature(v):
        hv = hvp(v)
        return hv if not damping else jax.tree_util.tree_map(lambda a, b: a + damping * b, hv, v)

    if normalize_grad:
        norm = jnp.sqrt(tree_vdot(g, g))
        g = jax.tree_util.tree_map(lambda t: t / jnp.maximum(norm, 1e-30), g)
    return Problem(g, curvature)


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
        raise ValueError(f"unknown precond_solver {name!r}; expected one of {PRECOND_SOLVERS}")
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
