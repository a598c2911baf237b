"""The preconditioner update the runner calls every ``update_preconditioner_every`` steps.

Routes. The curvature here is one global curvature-vector product (H_D + λI)v of the network on
the fit batch, not the reference's stage-by-stage sweep, so the route knobs map as follows (all
give the same P; see tests/test_llqr_routes.py):

- ``full_batch`` + ``cached_exact``: the whole batch is linearised once per fit (jax.linearize of
  the gradient); each inner step replays that linear map, the fastest products, holding the
  batch's residuals for the whole fit.
- ``lowmem_exact_k`` (whole batch): every product is one jvp-of-grad of the whole batch, nothing
  kept between products; within a product the memory is still the batch's activations.
- ``lowmem_exact_full``: the same, with the network rematerialised inside each product (nothing
  saved, the activations recomputed in the product's backward pass): e.g. 49 vs 57 MiB of XLA
  temporaries for a small ResNet at fit batch 256, at the price of a second forward pass.
- ``chunked_lqr_segment`` / ``sample_separable_exact``: g and every product are sums over chunks
  of the fit batch, run as a loop inside the jitted fit that recomputes each chunk's product from
  its inputs by jvp-of-grad (whatever the operator mode: caching every chunk's linearisation
  would hold the whole batch again), so the peak memory follows the chunk; a last chunk that does
  not divide the batch is summed after the loop. The batch chunk size wins when both are set.

``llqr_use_fast_paths`` selects the reference's shortcut for stages whose Hessian blocks are zero,
which a global product never forms, so it changes nothing here. benchmarks/llqr_memory.py
measures each route's compiled temporaries and fit time.
"""

from __future__ import annotations

import jax

from . import structures
from .exact import exact_inverse
from .lqr import blend, fit_blocks, make_problem


def chunk_size(cfg):
    """Fit-batch chunking: the chunked LQR-segment route or per-sample-chunk second-order products
    (the same sums, so the same P)."""
    if cfg.llqr_batch_update_mode == "chunked_lqr_segment":
        return cfg.llqr_batch_update_chunk_size
    if cfg.llqr_second_order_mode == "sample_separable_exact":
        return cfg.llqr_second_order_chunk_size
    return None


def make_llqr_fit(log_probs, cfg, ignore_index=None, layer_of=None):
    """Jitted ``fit(blocks, params, batch_stats, x, y, lr, ema) -> (blocks, first_cost, last_cost)``.

    ``log_probs(params, batch_stats, x)`` is the inference-mode network (running BN stats, no
    dropout); labels equal to ``ignore_index`` (translation padding) leave the loss. The fit
    starts from the current blocks (warm start) or from identity, runs ``precond_steps`` clipped
    solver steps at rate ``lr``, blends with the old blocks by ``ema`` and clamps diagonal/scalar
    entries. ``block_structure=exact`` replaces the inner steps by the
    dense solve P = (H_D + λI)^-1 (then the same EMA blend); its costs are J at the old and new P.
    ``layer_of`` names each parameter's controlled layer where the top-level groups are not the
    model's layers (``structures.layer_labels``).
    """

    def exact_fit(blocks, params, batch_stats, x, y, lr, ema):
        del lr
        f = lambda p, xc: log_probs(p, batch_stats, xc)  # noqa: E731
        inverse, cost = exact_inverse(f, params, x, y, divergence=cfg.divergence, order=cfg.divergence_order_param,
                                      label_smoothing=cfg.label_smoothing, damping=cfg.damping,
                                      normalize_grad=cfg.normalize_grad_for_lqr, ignore_index=ignore_index)
        new = blend(blocks, {"P": inverse}, ema)
        return new, cost(blocks["P"]), cost(new["P"])

    def fit(blocks, params, batch_stats, x, y, lr, ema):
        problem = make_problem(
            lambda p, xc: log_probs(p, batch_stats, xc),
            params,
            x,
            y,
            divergence=cfg.divergence,
            order=cfg.divergence_order_param,
            label_smoothing=cfg.label_smoothing,
            damping=cfg.damping,
            normalize_grad=cfg.normalize_grad_for_lqr,
            chunk_size=chunk_size(cfg),
            cache=cfg.llqr_operator_mode == "cached_exact",
            remat=cfg.llqr_operator_mode == "lowmem_exact_full",
            ignore_index=ignore_index,
        )
        start = blocks if cfg.warm_start_precond else structures.init_blocks(
            cfg.block_structure, params, cfg.precond_identity_scaling, layer_of)
        fitted, costs = fit_blocks(problem, cfg.block_structure, start, steps=cfg.precond_steps, lr=lr,
                                   solver=cfg.precond_solver, momentum=cfg.momentum, clip_norm=cfg.precond_clip_norm,
                                   layer_of=layer_of)
        new = structures.clamp_blocks(cfg.block_structure, blend(blocks, fitted, ema), cfg.allow_grad_inversion)
        first = costs[0] if cfg.precond_steps else 0.0
        last = costs[-1] if cfg.precond_steps else 0.0
        return new, first, last

    return jax.jit(exact_fit if cfg.block_structure == "exact" else fit)
