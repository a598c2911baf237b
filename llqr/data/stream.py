"""A replayable stream of training batches.

Batch ``k`` is a pure function of (seed, k): the stream concatenates seeded per-epoch
permutations, so an epoch of n examples at batch B spans n/B batches (a float, as the
reference's step accounting assumes) and a resumed run continues at the same example.
"""

from __future__ import annotations

import numpy as np


class BatchStream:
    def __init__(self, size: int, batch_size: int, seed: int):
        self.size, self.batch_size, self.seed = int(size), int(batch_size), int(seed)
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.size)
        return self._perms[epoch]

    def indices(self, batch_number: int) -> np.ndarray:
        start = batch_number * self.batch_size
        pos = np.arange(start, start + self.batch_size)
        epochs, offsets = np.divmod(pos, self.size)
        out = np.empty(self.batch_size, dtype=np.int64)
        for epoch in np.unique(epochs):
            sel = epochs == epoch
            out[sel] = self._perm(int(epoch))[offsets[sel]]
        return out
