"""Batch sources: one per training regime, each a replayable function of (seed, cursor, step).

Every source hands the step a ``Batch`` of stacked micro-batches (``grad_acc_steps`` of them, or
SVAG's two halves) and, when asked, the LLQR fit batch, both drawn from the same train stream at
its cursor (the cursor is checkpointed, so a resumed run reads the same data). ``peek`` lets a
refresh see the step's batch before the step (the Kronecker factors are taken on it).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np

from .noise import NoiseWeights


class Batch(NamedTuple):
    xs: Any  # (micro-batches, batch, ...) inputs; a tuple of arrays for translation
    ys: Any  # (micro-batches, batch, ...) labels
    coeffs: Any = None  # SVAG: per-micro-batch gradient coefficients
    ws: Any = None  # noisy GD: (1, N) per-example loss weights


def stack(trees):
    return jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *trees)


class MinibatchSource:
    """Consecutive stream batches: plain SGD noise."""

    def __init__(self, data, stream, cfg, place):
        self.data, self.stream, self.cfg, self.place = data, stream, cfg, place
        self.cursor = 0
        self._peeked: Batch | None = None

    def draw(self, count: int):
        """``count`` consecutive stream batches from the cursor, stacked on a new leading axis."""
        batches = [self.data.train_batch(self.stream.indices(self.cursor + i), self.cursor + i) for i in range(count)]
        self.cursor += count
        return stack([b[0] for b in batches]), np.stack([b[1] for b in batches])

    def make(self, step: int) -> Batch:
        return Batch(*self.place.stacked(self.draw(self.cfg.grad_acc_steps)))

    def peek(self, step: int) -> Batch:
        """The batch the next ``next(step)`` returns (drawn once)."""
        if self._peeked is None:
            self._peeked = self.make(step)
        return self._peeked

    def next(self, step: int) -> Batch:
        batch, self._peeked = self.peek(step), None
        return batch

    def fit_batch(self, size: int):
        """The P-fit batch: ``size`` examples from the stream (the reference concatenates batches
        until it has enough), placed for the fit."""
        n_batches = -(-size // self.cfg.batch_size)
        fx, fy = self.draw(n_batches)
        return self.place.flat((fx.reshape(-1, *fx.shape[2:])[:size], fy.reshape(-1)[:size]))


class TranslationSource(MinibatchSource):
    """Token batches; the fit batch has one fixed padded shape, so the fit compiles once."""

    def fit_batch(self, size: int):
        fx, fy, n_batches = self.data.fit_batch(self.stream, self.cursor, size)
        self.cursor += n_batches
        return self.place.flat((fx, fy))


class SvagSource(MinibatchSource):
    """SVAG: two stream batches per micro-batch (sde1) or one (sde2), with the step's coefficients."""

    def __init__(self, data, stream, cfg, place, noise: NoiseWeights):
        super().__init__(data, stream, cfg, place)
        self.noise = noise

    def make(self, step: int) -> Batch:
        xs, ys = self.place.stacked(self.draw(self.cfg.grad_acc_steps * self.noise.batches()))
        return Batch(xs, ys, self.noise.coeffs(step))


class NoisyGDSource(MinibatchSource):
    """Noisy gradient descent: the same fixed subset every step, freshly reweighted."""

    def __init__(self, data, stream, cfg, place, noise: NoiseWeights):
        super().__init__(data, stream, cfg, place)
        self.noise = noise

    def make(self, step: int) -> Batch:
        """The subset as (N/C, C, ...) chunks (one chunk: the whole subset), each chunk sharded over
        the devices under data_parallel, with the step's weights shaped alike."""
        x, y = self.data.train_batch(self.noise.subset, step)
        k = len(self.noise.subset) // self.noise.chunk
        xs, ys = self.place.stacked((chunked(x, k), chunked(y, k)))
        return Batch(xs, ys, self.noise.coeffs(step), self.place.stacked(self.noise.example_weights(step)))


def chunked(tree, k: int):
    """Leading axis N -> (k, N/k): k consecutive chunks (a new unit axis when k = 1)."""
    return jax.tree_util.tree_map(lambda a: np.reshape(a, (k, a.shape[0] // k, *a.shape[1:])), tree)


def make_source(cfg, data, stream, place, noise: NoiseWeights, translation: bool) -> MinibatchSource:
    if translation:
        return TranslationSource(data, stream, cfg, place)
    if noise.plain:
        return MinibatchSource(data, stream, cfg, place)
    if cfg.noise == "svag":
        return SvagSource(data, stream, cfg, place, noise)
    return NoisyGDSource(data, stream, cfg, place, noise)
