"""The jitted step functions, at module level (as in Flax's ImageNet example), bound to a run by
``make_steps``: the plain/noise-weighted train step, the SAM step, evaluation sums, train
accuracy, the LLQR fit and the Kronecker-factor refresh.

``Forward`` holds what a step needs of the model (apply under the run's precision, the loss);
``UpdateRule`` what it needs of the optimizer (the configured update P·g → main chain, the main
chain alone, P as a function). Both are static: ``make_steps`` binds them with ``functools.partial``
before ``jax.jit``, so the traced arguments are only the state and the batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ..models import layer_of
from ..optim import get_blocks, make_llqr_fit, precondition, refresh_kronecker, sam, scale_by_llqr
from ..optim.capture import kronecker_factors
from ..optim.losses import (
    accuracy_percent,
    eval_sums as loss_sums,
    regression_loss,
    regression_sums,
    smoothed_cross_entropy,
)
from .batches import Batch
from .optimizers import apply_updates, build_main_tx
from .state import TrainState


class Forward(NamedTuple):
    """The model's forward pass and loss as a step sees them."""

    model: Any
    label_smoothing: float
    pad: int | None  # translation: target positions with this label leave loss, accuracy and P fit
    low: Any  # jnp.bfloat16 under precision=bf16, else None
    hits: bool = False  # log_step_accuracy: the loss also returns (correct, counted) of its forward pass
    loss_name: str = "cross_entropy"  # or a regression loss on float targets (mse, huber): cfg.loss
    eval_smoothing: float = 0.0  # label smoothing of the test loss (cfg.eval_label_smoothing)

    @property
    def regression(self) -> bool:
        return self.loss_name != "cross_entropy"

    def apply(self, params, batch_stats, x, **kw):
        """The model with bf16 inputs under precision=bf16 (float inputs only; token ids stay
        ints); outputs in float32, so losses and metrics are computed in full precision."""
        if self.low is not None:
            x = jax.tree_util.tree_map(
                lambda a: a.astype(self.low) if jnp.issubdtype(a.dtype, jnp.floating) else a, x)
        variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
        out = self.model.apply(variables, x, **kw)
        return jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), out) if self.low is not None else out

    def loss(self, params, batch_stats, x, y, key, w=None):
        """Training-mode loss, and as aux the updated BN statistics and (with ``hits``) the forward
        pass's (correct, counted) predictions (None without)."""
        if batch_stats:
            out, mut = self.apply(params, batch_stats, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"])
            batch_stats = mut["batch_stats"]
        else:
            out = self.apply(params, batch_stats, x, train=True, rngs={"dropout": key})
        if self.regression:
            return regression_loss(self.loss_name, out, y, weights=w), (batch_stats, None)
        hits = None
        if self.hits:
            _, correct, counted = loss_sums(jax.lax.stop_gradient(out), y, self.pad)
            hits = jnp.stack([correct.astype(jnp.float32), counted.astype(jnp.float32)])
        return smoothed_cross_entropy(out, y, self.label_smoothing, self.pad, weights=w), (batch_stats, hits)


class UpdateRule(NamedTuple):
    """How gradients become parameter updates. ``tx`` is ``chain(scale_by_llqr, main_tx)`` with
    the preconditioner on, else ``main_tx``; an identity P is applied as I/s."""

    tx: Any
    main_tx: Any
    cfg: Any

    def configured(self, grads, opt_state, params):
        """P·g into the main chain (P = I/s when the preconditioner is off)."""
        scale = self.cfg.precond_identity_scaling
        if scale != 1.0 and not self.cfg.use_preconditioner:
            grads = jax.tree_util.tree_map(lambda g: g / scale, grads)
        return self.tx.update(grads, opt_state, params)

    def vanilla(self, grads, opt_state, params):
        """The main optimizer alone on g, sharing the configured chain's state: P's part of the
        state passes through, so momentum, the LR count and the checkpoint layout are the same
        whichever update a step uses."""
        if not self.cfg.use_preconditioner:
            return self.main_tx.update(grads, opt_state, params)
        llqr_state, main_state = opt_state
        updates, main_state = self.main_tx.update(grads, main_state, params)
        return updates, (llqr_state, main_state)

    def precond(self, opt_state) -> Callable:
        """v -> P·v with the current blocks, as scale_by_llqr applies it."""
        cfg, scale = self.cfg, self.cfg.precond_identity_scaling
        if not cfg.use_preconditioner:
            return lambda v: v if scale == 1.0 else jax.tree_util.tree_map(lambda x: x / scale, v)
        blocks = get_blocks(opt_state)
        return lambda v: precondition(cfg.block_structure, blocks, v, scale, layer_of(cfg.model))


def build_update_chain(cfg, lr) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
    """(configured chain, main optimizer). With the preconditioner on the chain is
    ``chain(scale_by_llqr, main)``: P g enters the main chain, so momentum and weight decay act on
    it. Its state is the tuple (LLQRState, main state), which the vanilla SAM update relies on."""
    main_tx = build_main_tx(cfg, lr)
    if not cfg.use_preconditioner:
        return main_tx, main_tx
    llqr = scale_by_llqr(cfg.block_structure, cfg.precond_identity_scaling, layer_of(cfg.model))
    return optax.chain(llqr, main_tx), main_tx


def _percent(hits):
    """Accuracy (%) from (correct, counted) rows (..., 2); None passes through."""
    return None if hits is None else 100.0 * jnp.sum(hits[..., 0]) / jnp.sum(hits[..., 1])


def accumulate(fwd: Forward, params, batch_stats, key, xs, ys, coeffs=None, ws=None):
    """Mean loss and mean gradient over the stacked micro-batches at fixed params, BN stats threaded
    through, one key split per micro-batch; also the final stats and key, and (``fwd.hits``) the
    training-mode accuracy over all micro-batches (else None). ``coeffs`` replace the mean by a
    weighted sum over micro-batches (SVAG's c1·L1 + c2·L2, or sde2's factor); ``ws`` are
    per-example loss weights (noisy gradient descent)."""

    def micro(carry, batch):
        batch_stats, k = carry
        k, sub = jax.random.split(k)
        x, y, *w = batch
        (loss, (batch_stats, hits)), grads = jax.value_and_grad(fwd.loss, has_aux=True)(
            params, batch_stats, x, y, sub, *w)
        return (batch_stats, k), (loss, grads, hits)

    batches = (xs, ys) if ws is None else (xs, ys, ws)
    (batch_stats, key), (losses, grads, hits) = jax.lax.scan(micro, (batch_stats, key), batches)
    if coeffs is None:
        grads = jax.tree_util.tree_map(lambda g: jnp.mean(g, axis=0), grads)
    else:  # the reported loss stays the plain mean: the coefficients shape the noise, not the objective
        grads = jax.tree_util.tree_map(lambda g: jnp.tensordot(coeffs.astype(g.dtype), g, axes=1), grads)
    return jnp.mean(losses), grads, batch_stats, key, _percent(hits)


def accumulate_chunks(fwd: Forward, params, batch_stats, key, xs, ys, ws):
    """Noisy GD over k equal chunks of its fixed subset: the mean over chunks of each chunk's
    weighted mean loss (1/C) Σ δ_i ℓ_i and of its gradient, i.e. (1/N) Σ δ_i ℓ_i over the subset.
    Unlike ``accumulate`` the sums ride in the scan's carry, so memory holds one chunk's activations
    and one gradient however many chunks there are. One key split per chunk; returns as
    ``accumulate``."""

    def chunk(carry, batch):
        loss_sum, grad_sum, hits_sum, batch_stats, k = carry
        k, sub = jax.random.split(k)
        (loss, (batch_stats, hits)), grads = jax.value_and_grad(fwd.loss, has_aux=True)(
            params, batch_stats, *batch[:2], sub, batch[2])
        hits_sum = None if hits is None else hits_sum + hits
        return (loss_sum + loss, jax.tree_util.tree_map(jnp.add, grad_sum, grads), hits_sum, batch_stats, k), None

    k = ys.shape[0]
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    hits0 = jnp.zeros((2,), jnp.float32) if fwd.hits else None
    (loss_sum, grads, hits, batch_stats, key), _ = jax.lax.scan(
        chunk, (jnp.zeros((), jnp.float32), zeros, hits0, batch_stats, key), (xs, ys, ws))
    grads = jax.tree_util.tree_map(lambda g: g / k, grads)
    return loss_sum / k, grads, batch_stats, key, _percent(hits)


def _step_grads(fwd: Forward, params, batch_stats, key, batch: Batch):
    """The train step's loss and gradient: noisy GD's chunked subset (more than one chunk) through
    ``accumulate_chunks``, everything else (one chunk included) through ``accumulate``."""
    if batch.ws is not None and batch.ys.shape[0] > 1:
        return accumulate_chunks(fwd, params, batch_stats, key, batch.xs, batch.ys, batch.ws)
    return accumulate(fwd, params, batch_stats, key, batch.xs, batch.ys, batch.coeffs, batch.ws)


def train_step(fwd: Forward, rule: UpdateRule, state: TrainState, batch: Batch):
    """One update with the configured rule on the batch's (weighted) mean gradient."""
    dropout_key, key = jax.random.split(state.dropout_key)
    loss, grads, batch_stats, _, acc = _step_grads(fwd, state.params, state.batch_stats, key, batch)
    updates, opt_state = rule.configured(grads, state.opt_state, state.params)
    params = apply_updates(rule.cfg, state.params, updates)
    new = state.replace(params=params, opt_state=opt_state, batch_stats=batch_stats, dropout_key=dropout_key)
    return (new, loss) if acc is None else (new, loss, acc)


def sam_step(fwd: Forward, rule: UpdateRule, state: TrainState, batch: Batch, rho):
    """One SAM step (docs/algorithms.md, SAM modes). Two-pass modes: centre pass at θ with key k,
    ε from g_c, perturbed pass at θ+ε on the same micro-batches with the key the centre pass
    returned, starting from the step's BN stats (the centre pass's stats are dropped). past_fsam: ε
    from the buffers, one pass at θ+ε with key k. The loss is the perturbed pass's; the outer update
    acts on g_p at θ (vanilla for fisher_sam, whose P is never fitted)."""
    cfg, mode = rule.cfg, rule.cfg.sam_mode
    dropout_key, key = jax.random.split(state.dropout_key)
    params, xs, ys = state.params, batch.xs, batch.ys
    if mode == "past_fsam":
        g_c, key_p = None, key
    else:
        _, g_c, _, key_p, _ = accumulate(fwd, params, state.batch_stats, key, xs, ys)
    eps = jax.lax.stop_gradient(sam.perturbation(
        mode, params=params, buffers=state.sam, g_c=g_c, rho=rho, precond=rule.precond(state.opt_state),
        perturb_mode=cfg.perturb_mode, norm_mode=cfg.norm_mode, gbar_eps=cfg.gbar_eps, asam_eta=cfg.asam_eta,
        fisher_sam_eta=cfg.fisher_sam_eta))
    perturbed = jax.tree_util.tree_map(jnp.add, params, eps)
    loss, g_p, batch_stats, _, acc = accumulate(fwd, perturbed, state.batch_stats, key_p, xs, ys)
    preconditioned = cfg.sam_use_preconditioner_on_update and mode != "fisher_sam"
    updates, opt_state = (rule.configured if preconditioned else rule.vanilla)(g_p, state.opt_state, params)
    buffers = sam.update_buffers(mode, state.sam, g_c=g_c, g_p=g_p, beta=cfg.gbar_beta,
                                 perturb_mode=cfg.perturb_mode, gbar_eps=cfg.gbar_eps)
    new = state.replace(params=apply_updates(cfg, params, updates), opt_state=opt_state, sam=buffers,
                        batch_stats=batch_stats, dropout_key=dropout_key)
    return (new, loss) if acc is None else (new, loss, acc)


def kronecker_refresh(fwd: Forward, state: TrainState, batch: Batch):
    """The Kronecker optimizers' refresh: factors A, G captured on the step's first micro-batch
    (with the dropout key that step will use), handed to the transformation's refresh."""
    _, key = jax.random.split(state.dropout_key)

    def apply_fn(v, x):
        return fwd.apply(v["params"], v.get("batch_stats"), x, train=True, rngs={"dropout": key},
                         mutable=["batch_stats"])[0]

    factors = kronecker_factors(apply_fn, state.params, batch.xs[0], batch.ys[0],
                                lambda out, y: smoothed_cross_entropy(out, y, fwd.label_smoothing, fwd.pad),
                                batch_stats=state.batch_stats or None)
    return state.replace(opt_state=refresh_kronecker(state.opt_state, factors, state.params))


def eval_sums(fwd: Forward, params, batch_stats, x, y):
    """(summed NLL, correct, counted positions) of the inference model on one batch; regression:
    (summed per-example loss, examples)."""
    out = fwd.apply(params, batch_stats, x, train=False)
    if fwd.regression:
        return regression_sums(fwd.loss_name, out, y)
    return loss_sums(out, y, fwd.pad, fwd.eval_smoothing)


def train_accuracy(fwd: Forward, params, batch_stats, x, y):
    return accuracy_percent(fwd.apply(params, batch_stats, x, train=False), y, fwd.pad)


def fit_log_probs(fwd: Forward, params, batch_stats, x):
    """The model output the LLQR fit differentiates; padded target positions (prev_output is pad
    exactly there) add no divergence curvature."""
    out = fwd.apply(params, batch_stats, x, train=False)
    return out if fwd.pad is None else jnp.where((x[1] != fwd.pad)[..., None], out, 0.0)


class Steps(NamedTuple):
    """A run's compiled functions (``sam`` is None without a SAM mode)."""

    train: Callable  # (state, batch) -> (state, loss[, accuracy with log_step_accuracy]); donates the state
    sam: Callable | None  # (state, batch, rho) -> (state, loss[, accuracy])
    refresh_factors: Callable  # (state, batch) -> state: the Kronecker optimizers' refresh
    eval_sums: Callable  # (params, batch_stats, x, y) -> (nll sum, correct, count); regression: (loss sum, count)
    train_accuracy: Callable | None  # (params, batch_stats, x, y) -> percent; None for regression
    llqr_fit: Callable  # (blocks, params, batch_stats, x, y, precond_lr, ema) -> (blocks, cost0, cost1)


def make_steps(model, tx, main_tx, cfg, pad: int | None = None) -> Steps:
    fwd = Forward(model, cfg.label_smoothing, pad, jnp.bfloat16 if cfg.precision == "bf16" else None,
                  cfg.log_step_accuracy, cfg.loss, cfg.label_smoothing if cfg.eval_label_smoothing else 0.0)
    rule = UpdateRule(tx, main_tx, cfg)
    bind = functools.partial
    return Steps(
        train=jax.jit(bind(train_step, fwd, rule), donate_argnums=0),
        sam=jax.jit(bind(sam_step, fwd, rule), donate_argnums=0) if cfg.sam_mode is not None else None,
        refresh_factors=jax.jit(bind(kronecker_refresh, fwd), donate_argnums=0),
        eval_sums=jax.jit(bind(eval_sums, fwd)),
        train_accuracy=None if fwd.regression else jax.jit(bind(train_accuracy, fwd)),
        llqr_fit=make_llqr_fit(bind(fit_log_probs, fwd), cfg, ignore_index=pad, layer_of=layer_of(cfg.model)),
    )
