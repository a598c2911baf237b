"""Token-bucketed translation batches with a few fixed shapes, seeded and replayable.

Every distinct array shape is a separate XLA compilation, so examples go into at most 8 length
buckets whose padded shape (capacity, src bound, tgt bound) never changes. Global batch ``k`` is a
pure function of (seed, k), like :class:`llqr.data.stream.BatchStream`, so a resumed run replays
the same batches; and every epoch has the same number of batches, so step accounting is exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .iwslt_cache import EOS, PAD

ALIGN = 8  # bounds are multiples of 8: friendlier tiling on accelerators


def _round_up(x, multiple: int = ALIGN) -> int:
    return max(multiple, int(math.ceil(float(x) / multiple)) * multiple)


def bucket_bounds(src_lens: np.ndarray, tgt_lens: np.ndarray, num_buckets: int = 8) -> list[tuple[int, int]]:
    """(src bound, tgt bound) per bucket: the ((i+1)/num_buckets)-quantiles, rounded up to x8.

    Both bounds are nondecreasing; buckets with the same pair of bounds are merged, and the last
    pair is the maximum lengths rounded up, so every example fits some bucket.
    """
    bounds: list[tuple[int, int]] = []
    for i in range(num_buckets):
        q = (i + 1) / num_buckets
        pair = (_round_up(np.quantile(src_lens, q)), _round_up(np.quantile(tgt_lens, q)))
        if i == num_buckets - 1:
            pair = (_round_up(src_lens.max()), _round_up(tgt_lens.max()))
        if not bounds or pair != bounds[-1]:
            bounds.append(pair)
    return bounds


def assign_buckets(src_lens: np.ndarray, tgt_lens: np.ndarray, bounds: Sequence[tuple[int, int]]) -> np.ndarray:
    """Index of the smallest bucket that holds each example on both sides."""
    out = np.full(len(src_lens), -1, dtype=np.int64)
    for i, (sb, tb) in reversed(list(enumerate(bounds))):  # last writer = smallest fitting bucket
        out[(src_lens <= sb) & (tgt_lens <= tb)] = i
    if (out < 0).any():
        raise ValueError("some examples fit no bucket; the last bound must cover the longest example")
    return out


class TokenBatchStream:
    """Batches of at most ``max_tokens`` padded tokens (capacity x max(src bound, tgt bound)).

    Epoch e: a permutation from ``default_rng([seed, e])``, stable-sorted by (tgt len, src len) so a
    batch holds similar lengths while ties stay shuffled; each bucket's examples in that order are
    chunked by its capacity, and the epoch's batch list is shuffled with the same rng. A bucket's
    last batch may hold fewer examples than its capacity; it is padded to the full shape.
    """

    def __init__(self, src_lens, tgt_lens, max_tokens: int, seed: int, num_buckets: int = 8):
        self.src_lens = np.asarray(src_lens, dtype=np.int64)
        self.tgt_lens = np.asarray(tgt_lens, dtype=np.int64)
        if self.src_lens.shape != self.tgt_lens.shape or self.src_lens.size == 0:
            raise ValueError("need the same positive number of source and target lengths")
        self.max_tokens, self.seed = int(max_tokens), int(seed)
        self.size = int(self.src_lens.size)
        self.bounds = bucket_bounds(self.src_lens, self.tgt_lens, num_buckets)
        self.capacity = [max(1, self.max_tokens // max(sb, tb)) for sb, tb in self.bounds]
        self.bucket = assign_buckets(self.src_lens, self.tgt_lens, self.bounds)
        counts = np.bincount(self.bucket, minlength=len(self.bounds))
        self.batches_per_epoch = int(sum(-(-int(n) // cap) for n, cap in zip(counts, self.capacity)))
        self._epochs: dict[int, tuple[list[np.ndarray], np.ndarray]] = {}

    @property
    def shapes(self) -> list[tuple[int, int, int]]:
        """(rows, src width, tgt width) of each bucket's batches."""
        return [(cap, sb, tb) for cap, (sb, tb) in zip(self.capacity, self.bounds)]

    @property
    def largest_shape(self) -> tuple[int, int]:
        """(src width, tgt width) that holds any example."""
        return self.bounds[-1]

    def _epoch(self, epoch: int) -> tuple[list[np.ndarray], np.ndarray]:
        if epoch not in self._epochs:
            if len(self._epochs) > 3:
                self._epochs.pop(min(self._epochs))
            rng = np.random.default_rng([self.seed, epoch])
            perm = rng.permutation(self.size)
            order = perm[np.lexsort((self.src_lens[perm], self.tgt_lens[perm]))]  # stable: ties keep perm order
            batches, buckets = [], []
            for i, cap in enumerate(self.capacity):
                members = order[self.bucket[order] == i]
                for start in range(0, members.size, cap):
                    batches.append(members[start:start + cap])
                    buckets.append(i)
            shuffle = rng.permutation(len(batches))
            self._epochs[epoch] = ([batches[j] for j in shuffle], np.asarray(buckets, dtype=np.int64)[shuffle])
        return self._epochs[epoch]

    def indices(self, batch_number: int) -> np.ndarray:
        """Example indices of global batch ``batch_number`` (epoch = batch_number // batches_per_epoch)."""
        epoch, j = divmod(int(batch_number), self.batches_per_epoch)
        return self._epoch(epoch)[0][j]

    def bucket_of(self, batch_number: int) -> int:
        epoch, j = divmod(int(batch_number), self.batches_per_epoch)
        return int(self._epoch(epoch)[1][j])

    def bucket_for(self, indices) -> int:
        """The smallest bucket holding all of ``indices`` (their batch's bucket for stream batches)."""
        return int(self.bucket[np.asarray(indices, dtype=np.int64)].max())


def sort_rows(src_lens: Sequence[int]) -> np.ndarray:
    """Row order of a batch: source length descending, ties in input order (as fairseq sorts)."""
    return np.argsort(-np.asarray(src_lens, dtype=np.int64), kind="stable")


def collate(src_seqs, tgt_seqs, rows: int, src_width: int, tgt_width: int):
    """``((src, prev), tgt)`` int32 arrays of shape (rows, width) from eos-terminated id sequences.

    src is left-padded (fairseq's left_pad_source); tgt is right-padded; prev is tgt shifted right
    behind an eos (teacher forcing input). Rows beyond the examples are all pad (zero loss weight).
    """
    n = len(src_seqs)
    if len(tgt_seqs) != n:
        raise ValueError(f"{n} source but {len(tgt_seqs)} target sequences")
    if n > rows:
        raise ValueError(f"{n} examples do not fit {rows} rows")
    src = np.full((rows, src_width), PAD, dtype=np.int32)
    prev = np.full((rows, tgt_width), PAD, dtype=np.int32)
    tgt = np.full((rows, tgt_width), PAD, dtype=np.int32)
    for r, i in enumerate(sort_rows([len(s) for s in src_seqs])):
        s, t = np.asarray(src_seqs[i]), np.asarray(tgt_seqs[i])
        if len(s) > src_width or len(t) > tgt_width:
            raise ValueError(f"example of lengths ({len(s)}, {len(t)}) does not fit widths ({src_width}, {tgt_width})")
        if len(s):
            src[r, src_width - len(s):] = s
        tgt[r, :len(t)] = t
        if len(t):
            prev[r, 0] = EOS
            prev[r, 1:len(t)] = t[:-1]
    return (src, prev), tgt
