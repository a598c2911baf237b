"""The gradient-noise study's measurements and per-step weights (SVAG, noisy gradient descent).

``NoiseProbe`` measures, at evaluation points late in training, G_t = ‖∇L‖² and the trace N_t of
the minibatch-gradient noise (``llqr.optim.svag.tree_noise_statistics``): M minibatch gradients
from a side stream (its own seed, so the training stream is untouched and a resume replays) and a
large-sample gradient over a fixed subset. The linear scaling rule needs N_t/(B·G_t) ≫ 1.

``NoiseWeights`` gives the per-step inputs of the SVAG and noisy-GD updates: how many stream
batches a step draws and the coefficients or per-example weights, all functions of (seed, step).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..data.stream import BatchStream
from ..optim import svag
from ..optim.losses import smoothed_cross_entropy

FULL_GRAD_EXAMPLES = 4096  # the large-sample gradient's subset (all of a smaller train split)
SIDE_SEED = 7919


class NoiseProbe:
    def __init__(self, model, data, cfg):
        self.data, self.cfg = data, cfg
        self.stream = BatchStream(data.train_size, cfg.batch_size, cfg.data_seed + SIDE_SEED)
        n = min(data.train_size, FULL_GRAD_EXAMPLES)
        self.subset = np.random.default_rng([cfg.data_seed, SIDE_SEED]).permutation(data.train_size)[:n]

        def grad(params, batch_stats, x, y):
            def loss(p):
                variables = {"params": p, **({"batch_stats": batch_stats} if batch_stats else {})}
                kw = {"mutable": ["batch_stats"]} if batch_stats else {}
                out = model.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(0)}, **kw)
                return smoothed_cross_entropy(out[0] if batch_stats else out, y, cfg.label_smoothing)

            return jax.grad(loss)(params)

        self._grad = jax.jit(grad)

    def due(self, step: int, spe: float) -> bool:
        start = self.cfg.noise_stats_from_epoch
        return start is not None and step >= start * spe

    def measure(self, state, step: int) -> dict:
        params, bs, b, m = state.params, state.batch_stats, self.cfg.batch_size, self.cfg.noise_stats_batches
        grads = []
        for i in range(m):
            k = step * m + i
            x, y = self.data.train_batch(self.stream.indices(k), k)
            grads.append(self._grad(params, bs, x, y))
        stacked = jax.tree_util.tree_map(lambda *g: jnp.stack(g), *grads)
        chunks = [self.subset[i:i + b] for i in range(0, len(self.subset), b)]
        full = None
        for j, idx in enumerate(chunks):
            x, y = self.data.train_batch(idx, -1 - j)
            n = len(idx)
            g = jax.tree_util.tree_map(lambda a, n=n: a * n, self._grad(params, bs, x, y))
            full = g if full is None else jax.tree_util.tree_map(jnp.add, full, g)
        full = jax.tree_util.tree_map(lambda a: a / len(self.subset), full)
        stats = svag.tree_noise_statistics(stacked, full, batch_size=b, full_grad_batch_size=len(self.subset))
        return {"noise_G": float(stats["G"]), "noise_N": float(stats["N"]), "noise_ratio": float(stats["ratio"])}


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
        """(1, N) noisy-GD weights δ_i = 1 + √(N/B)(z_i − z̄), fresh each step."""
        n = len(self.subset)
        w = svag.noisy_gd_weights(jax.random.fold_in(self.key, step), n, self.cfg.batch_size, jnp.float32)
        return jnp.reshape(w, (1, n))
