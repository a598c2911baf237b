"""The gradient-noise study's measurements and per-step weights (SVAG, noisy gradient descent).

``NoiseProbe`` measures, late in training, G_t = ‖∇L‖² and the trace N_t of the minibatch-gradient
noise (``llqr.optim.svag.tree_noise_statistics``): M minibatch gradients from a side stream (its own
seed, so the training stream is untouched and a resume replays) and, by default, a large-sample
gradient over a fixed subset for G_t (``noise_stats_full_grad_examples=0``: G_t from the M
gradients themselves, the SVAG study's estimator). The linear scaling rule needs N_t/(B·G_t) ≫ 1.
``window_average`` is the study's summary: the measurements of an epoch window, averaged.

``NoiseWeights`` gives the per-step inputs of the SVAG and noisy-GD updates: how many stream
batches a step draws and the coefficients or per-example weights, all functions of (seed, step).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from ..data.stream import BatchStream
from ..optim import svag
from ..optim.losses import smoothed_cross_entropy

SIDE_SEED = 7919
STACK_MAX = 256  # more minibatch gradients than this are summed in a streaming accumulator, not stacked
NOISE_KEYS = ("noise_G", "noise_N", "noise_ratio")


def probe_batches(cfg) -> int:
    """M: noise_stats_batches, or more to reach noise_stats_examples (the study: max(200, 12800 // B))."""
    extra = cfg.noise_stats_examples // cfg.batch_size if cfg.noise_stats_examples is not None else 0
    return max(cfg.noise_stats_batches, extra)


def window_average(measurements, start_step: float, end_step: float, batch_size: int) -> dict:
    """Mean G and N of the measurements (events with ``noise_G``) at steps in [start, end), and
    N/(B·G) of those means; ``noise_measurements`` counts them (no means when it is 0)."""
    inside = [e for e in measurements if "noise_G" in e and start_step <= e["step"] < end_step]
    out = {"noise_measurements": len(inside)}
    if inside:
        g = float(np.mean([e["noise_G"] for e in inside]))
        n = float(np.mean([e["noise_N"] for e in inside]))
        out.update(noise_G=g, noise_N=n, noise_ratio=n / (batch_size * g))
    return out


class NoiseProbe:
    def __init__(self, model, data, cfg):
        self.data, self.cfg = data, cfg
        self.stream = BatchStream(data.train_size, cfg.batch_size, cfg.data_seed + SIDE_SEED)
        self.m = probe_batches(cfg)
        n = min(data.train_size, cfg.noise_stats_full_grad_examples)
        self.subset = np.random.default_rng([cfg.data_seed, SIDE_SEED]).permutation(data.train_size)[:n]

        def grad(params, batch_stats, x, y):
            def loss(p):
                variables = {"params": p, **({"batch_stats": batch_stats} if batch_stats else {})}
                kw = {"mutable": ["batch_stats"]} if batch_stats else {}
                out = model.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(0)}, **kw)
                return smoothed_cross_entropy(out[0] if batch_stats else out, y, cfg.label_smoothing)

            return jax.grad(loss)(params)

        self._grad = jax.jit(grad)
        self._welford = jax.jit(svag.noise_accumulator_update)

    def due(self, step: int, spe: float) -> bool:
        start = self.cfg.noise_stats_from_epoch
        return start is not None and step >= start * spe

    def at_evaluation(self, step: int, spe: float) -> bool:
        """Measured with the evaluation at ``step`` (without noise_stats_every)."""
        return self.cfg.noise_stats_every is None and self.due(step, spe)

    def on_schedule(self, step: int, spe: float) -> bool:
        """``step`` is the first of a noise_stats_every period (the step reaching j·every epochs)."""
        every = self.cfg.noise_stats_every
        if every is None or not self.due(step, spe):
            return False
        period = every * spe
        return step == 0 or math.floor(step / period) != math.floor((step - 1) / period)

    def measure(self, state, step: int) -> dict:
        params, bs, b, m = state.params, state.batch_stats, self.cfg.batch_size, self.m
        grads = (self._grad(params, bs, *self.data.train_batch(self.stream.indices(k), k))
                 for k in range(step * m, step * m + m))
        full = self._full_grad(params, bs) if len(self.subset) else None
        size = len(self.subset) or None
        if m <= STACK_MAX:
            stacked = jax.tree_util.tree_map(lambda *g: jnp.stack(g), *grads)
            stats = svag.tree_noise_statistics(stacked, full, batch_size=b, full_grad_batch_size=size)
        else:  # memory of one gradient, not M
            acc = None
            for g in grads:
                acc = self._welford(acc or svag.noise_accumulator_init(g), g)
            stats = svag.noise_accumulator_finalize(acc, b, full, full_grad_batch_size=size)
        return {"noise_G": float(stats["G"]), "noise_N": float(stats["N"]), "noise_ratio": float(stats["ratio"])}

    def _full_grad(self, params, bs):
        """The mean gradient over the fixed subset, in chunks of B."""
        b, full = self.cfg.batch_size, None
        for j, idx in enumerate(self.subset[i:i + b] for i in range(0, len(self.subset), b)):
            x, y = self.data.train_batch(idx, -1 - j)
            n = len(idx)
            g = jax.tree_util.tree_map(lambda a, n=n: a * n, self._grad(params, bs, x, y))
            full = g if full is None else jax.tree_util.tree_map(jnp.add, full, g)
        return jax.tree_util.tree_map(lambda a: a / len(self.subset), full)


class NoiseWeights:
    """Per-step batches and weights of ``cfg.noise``; ``plain`` when the step is ordinary SGD."""

    def __init__(self, cfg, train_size: int):
        self.cfg, self.l = cfg, cfg.svag_l
        self.key = jax.random.PRNGKey(cfg.data_seed + SIDE_SEED)
        self.plain = cfg.noise == "minibatch" or (cfg.noise == "svag" and self.l == 1)
        n = cfg.noisy_gd_examples or train_size
        if cfg.noise == "noisy_gd" and n > train_size:
            from ..config import ConfigError

            raise ConfigError(f"noisy_gd_examples={n} exceeds the {train_size} training examples")
        self.chunk = cfg.noisy_gd_chunk or n
        if cfg.noise == "noisy_gd" and n % self.chunk:
            from ..config import ConfigError

            raise ConfigError(f"noisy_gd_chunk={self.chunk} must divide the {n}-example noisy-GD subset")
        self.subset = np.sort(np.random.default_rng([cfg.data_seed, 1]).permutation(train_size)[:n])

    def batches(self) -> int:
        """Stream batches one step consumes (sde1: the two halves)."""
        return 2 if self.cfg.noise == "svag" and self.cfg.svag_variant == "sde1" and not self.plain else 1

    def coeffs(self, step: int):
        if self.cfg.noise != "svag" or self.plain:
            return None
        if self.cfg.svag_variant == "sde1":
            return jnp.asarray(svag.svag_coefficients(self.l), jnp.float32)
        return jnp.reshape(svag.sde2_factor(self.l, jax.random.fold_in(self.key, step), jnp.float32), (1,))

    def example_weights(self, step: int):
        """(N/C, C) noisy-GD weights δ_i = 1 + √(N/B)(z_i − z̄), fresh each step, one row per chunk
        of C subset examples (C = N without ``noisy_gd_chunk``): one draw of z for the whole step."""
        n = len(self.subset)
        w = svag.noisy_gd_weights(jax.random.fold_in(self.key, step), n, self.cfg.batch_size, jnp.float32)
        return jnp.reshape(w, (n // self.chunk, self.chunk))
