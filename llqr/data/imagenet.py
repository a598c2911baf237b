"""ImageNet 2012 for the runner: packed shards (imagenet_pack), staged (imagenet_shards), decoded by a
pool of worker processes (imagenet_decode) with prefetch.

``load(directory, seed)`` returns an ``ImageNetDataset`` with the interface of ``ArrayDataset`` that
the runner uses (``name``, ``path``, ``num_classes``, ``train_size``, ``train_batch(indices, k)``)
plus ``test_size``, ``y_test`` and ``eval_batches(batch_size)``, since the images never sit in memory.

- Training batch ``k``'s augmentation (resize 480 or 256, crop offset, flip) comes from
  ``batch_rng(seed, k)`` in this process, so a batch is a pure function of (seed, k, indices):
  a resumed run replays exactly, whatever the number of workers or the prefetch state.
- Workers are started with ``forkserver`` (else ``spawn``): a process that has initialised JAX is
  never forked. They read images with ``os.pread`` from the shards and write the normalised float32
  crops straight into shared-memory slots (a file in ``/dev/shm``), so a batch crosses no pipe; the
  main process copies it out once.
- ``attach_stream(stream)`` tells the dataset the BatchStream: asking for batch k then submits
  batches k+1..k+depth, and the next call finds its batch decoded. A call whose indices differ from
  the stream's (or a jump to another k) is decoded on demand, so correctness never depends on prefetch.
- ``close()`` (or ``with``) stops the workers and removes the slots; it also runs at interpreter exit,
  before multiprocessing joins its children, so an unclosed dataset never hangs the exit.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.util
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .augment import batch_rng
from .imagenet_decode import IMAGE_SHAPE, eval_params, train_params
from .imagenet_pack import pack  # noqa: F401  (re-exported: llqr.data.imagenet.pack)
from .imagenet_pool import Job, Pool, Slots, default_workers
from .imagenet_shards import check, load_index, read_manifest, resolve_dir, stage as stage_shards

stage = stage_shards  # llqr.data.imagenet.stage(shard_dir, scratch=None)
DEFAULT_PREFETCH = 3


class ImageNetDataset:
    """Packed ImageNet, decoded on demand by a worker pool; see the module docstring."""

    name = "imagenet"
    input_shape = IMAGE_SHAPE

    def __init__(self, shard_dir, seed: int = 0, workers: int | None = None, prefetch: int = DEFAULT_PREFETCH,
                 start_method: str | None = None, origin=None):
        self.dir = Path(shard_dir)
        self.path = str(self.dir)
        self.origin = str(origin or shard_dir)  # the packed folder this was staged from (for messages)
        self.manifest = read_manifest(self.dir)
        self.classes = list(self.manifest["classes"])
        self.num_classes = int(self.manifest["num_classes"])
        self._train = load_index(self.dir, self.manifest, "train")
        self._val = load_index(self.dir, self.manifest, "val")
        self.y_train = self._train["label"].astype(np.int32)
        self.y_test = self._val["label"].astype(np.int32)
        self.seed = int(seed)
        self.workers = int(workers) if workers else default_workers()
        self.prefetch = max(0, int(prefetch))
        self.start_method = start_method
        self._shards = [str(self.dir / s["name"]) for split in ("train", "val")
                        for s in self.manifest["splits"][split]["shards"]]
        self._val_shard0 = len(self.manifest["splits"]["train"]["shards"])
        self._pool: Pool | None = None
        self._finalizer = None
        self._stream = None
        self._depth = self.prefetch
        self._train_slots: Slots | None = None
        self._train_jobs: dict[int, Job] = {}
        self._eval_slots: dict[int, Slots] = {}
        self.closed = False

    # -- sizes ---------------------------------------------------------------------------------------
    @property
    def train_size(self) -> int:
        return int(len(self._train))

    @property
    def test_size(self) -> int:
        return int(len(self._val))

    # -- the worker pool (started on first use) ------------------------------------------------------
    def _get_pool(self) -> Pool:
        if self.closed:
            raise RuntimeError("this ImageNetDataset is closed")
        if self._pool is None:
            self._pool = Pool(self._shards, self.workers, self.start_method, self.origin)
            # runs on close(), garbage collection, or at exit before multiprocessing joins its children
            self._finalizer = multiprocessing.util.Finalize(self, self._pool.close, exitpriority=10)
        return self._pool

    def _refs(self, table: np.ndarray, indices: np.ndarray, shard0: int = 0) -> np.ndarray:
        rows = table[indices]
        return np.stack([rows["shard"].astype(np.int64) + shard0, rows["offset"].astype(np.int64),
                         rows["length"].astype(np.int64)], axis=1)

    # -- training ------------------------------------------------------------------------------------
    def attach_stream(self, stream, depth: int | None = None) -> None:
        """Prefetch along ``stream`` (a BatchStream over this training set): ``depth`` batches ahead."""
        if stream.size != self.train_size:
            raise ValueError(f"the stream covers {stream.size} examples, the training set has {self.train_size}")
        self._depth = self.prefetch if depth is None else max(0, int(depth))
        self._stream = stream
        pool = self._get_pool()
        for job in self._train_jobs.values():
            pool.orphan(job)
        self._train_jobs.clear()
        if self._depth and (self._train_slots is None or self._train_slots.rows != stream.batch_size
                            or self._train_slots.count != self._depth + 1):
            self._train_slots = pool.new_slots(stream.batch_size, self._depth + 1)

    def _submit_train(self, pool: Pool, indices: np.ndarray, k: int, block: bool) -> Job | None:
        slots = self._train_slots if self._train_slots is not None and len(indices) <= self._train_slots.rows else None
        if slots is not None and not slots.free:
            pool.poll()
            if not slots.free and not (block and pool.wait_for_slot(slots)):
                if not block:
                    return None
                slots = None
        params = train_params(batch_rng(self.seed, k), len(indices))
        return pool.submit(self._refs(self._train, indices), params, slots, indices, self.y_train[indices])

    def train_batch(self, indices: np.ndarray, batch_number: int) -> tuple[np.ndarray, np.ndarray]:
        """Training batch ``batch_number`` at ``indices``: (float32 (n, 224, 224, 3) normalised, int32 (n,))."""
        indices = np.asarray(indices, np.int64).ravel()
        if indices.size and (indices.min() < 0 or indices.max() >= self.train_size):
            raise IndexError(f"training indices outside 0..{self.train_size - 1}")
        k = int(batch_number)
        pool = self._get_pool()
        for b in [b for b in self._train_jobs if b < k or b > k + self._depth]:
            pool.orphan(self._train_jobs.pop(b))
        job = self._train_jobs.pop(k, None)
        if job is not None and not np.array_equal(job.indices, indices):
            pool.orphan(job)
            job = None
        if job is None:
            job = self._submit_train(pool, indices, k, block=True)
        if self._stream is not None:
            for b in range(k + 1, k + self._depth + 1):
                if b not in self._train_jobs:
                    ahead = self._submit_train(pool, self._stream.indices(b), b, block=False)
                    if ahead is None:
                        break
                    self._train_jobs[b] = ahead
        return pool.take(job), job.labels

    # -- evaluation ----------------------------------------------------------------------------------
    def eval_batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The whole validation split in order, resized to 256 x 256 and centre-cropped; the last batch may
        be smaller. Deterministic: no augmentation."""
        batch_size = int(batch_size)
        pool = self._get_pool()
        if batch_size not in self._eval_slots:
            self._eval_slots[batch_size] = pool.new_slots(batch_size, max(2, self.prefetch + 1))
        slots = self._eval_slots[batch_size]
        starts = deque(range(0, self.test_size, batch_size))
        pending: deque[Job] = deque()
        try:
            while starts or pending:
                while starts and len(pending) < slots.count:
                    pool.poll()
                    target = slots
                    if not slots.free:
                        if pending:
                            break  # hand out a batch first
                        if not pool.wait_for_slot(slots):
                            target = None  # cannot happen in normal use; decode through the queue instead
                    s = starts.popleft()
                    idx = np.arange(s, min(s + batch_size, self.test_size))
                    pending.append(pool.submit(self._refs(self._val, idx, self._val_shard0), eval_params(len(idx)),
                                               target, idx, self.y_test[idx]))
                job = pending.popleft()
                yield pool.take(job), job.labels
        finally:
            if not self.closed and self._pool is not None:
                for job in pending:
                    self._pool.orphan(job)

    # -- lifetime ------------------------------------------------------------------------------------
    def close(self) -> None:
        self.closed = True
        self._train_jobs.clear()
        if self._finalizer is not None:
            self._finalizer()  # stops the workers, removes the slot files; runs once
        self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"ImageNetDataset({self.path!r}, train={self.train_size}, val={self.test_size}, "
                f"classes={self.num_classes}, workers={self.workers})")


def load(directory, seed: int = 0, *, workers: int | None = None, prefetch: int = DEFAULT_PREFETCH,
         stage: bool = True, scratch=None, verify: str = "size", start_method: str | None = None,
         log=print) -> ImageNetDataset:
    """Open packed ImageNet under ``directory`` (the folder of ``manifest.json`` or its parent, e.g.
    ``data/imagenet``), staged to ``scratch`` (default ``$SLURM_TMPDIR``, else ``$TMPDIR``) when ``stage``.
    Missing or partial shards raise DataError naming them and how to rebuild."""
    shard_dir = resolve_dir(directory)
    check(shard_dir)
    read_dir = stage_shards(shard_dir, scratch=scratch, verify=verify, log=log) if stage else shard_dir
    if read_dir != shard_dir:
        check(read_dir)
    return ImageNetDataset(read_dir, seed=seed, workers=workers, prefetch=prefetch, start_method=start_method,
                           origin=shard_dir)
