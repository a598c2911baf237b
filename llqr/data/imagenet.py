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

import contextlib
import multiprocessing
import multiprocessing.util
import os
import queue
import shutil
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Iterator

import numpy as np

from .augment import batch_rng
from .errors import DataError
from .imagenet_decode import IMAGE_SHAPE, eval_params, train_params, worker_main
from .imagenet_pack import pack  # noqa: F401  (re-exported: llqr.data.imagenet.pack)
from .imagenet_shards import REBUILD, check, load_index, read_manifest, resolve_dir
from .imagenet_shards import stage as stage_shards

stage = stage_shards  # llqr.data.imagenet.stage(shard_dir, scratch=None)
IMAGE_BYTES = int(np.prod(IMAGE_SHAPE)) * 4
DEFAULT_PREFETCH = 3
MAX_WORKERS = 32


def default_workers() -> int:
    """``$SLURM_CPUS_PER_TASK`` (else the CPUs this process may use) minus one for the main process, 1..32."""
    try:
        cpus = int(os.environ["SLURM_CPUS_PER_TASK"])
    except (KeyError, ValueError):
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus - 1, MAX_WORKERS))


def _slot_dir(nbytes: int) -> str:
    """/dev/shm when it has room (memory-backed), else the temporary directory."""
    for candidate in ("/dev/shm", tempfile.gettempdir()):
        try:
            if os.access(candidate, os.W_OK) and shutil.disk_usage(candidate).free > 2 * nbytes:
                return candidate
        except OSError:
            pass
    return tempfile.gettempdir()


@contextlib.contextmanager
def _main_hidden():
    """Start processes without the main module's path or name, so spawn/forkserver children do not re-run
    the user's script (which may lack an ``if __name__ == "__main__"`` guard); workers need only llqr."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


class _Slots:
    """``count`` batch buffers of up to ``rows`` images in one shared file the workers map by name."""

    def __init__(self, rows: int, count: int):
        self.rows, self.count = rows, count
        nbytes = rows * count * IMAGE_BYTES
        fd, self.path = tempfile.mkstemp(prefix=f"llqr-imagenet-{os.getpid()}-", suffix=".slots",
                                         dir=_slot_dir(nbytes))
        try:
            os.ftruncate(fd, nbytes)
        finally:
            os.close(fd)
        self.array = np.memmap(self.path, np.float32, "r+").reshape(count, rows, *IMAGE_SHAPE)
        self.free = list(range(count))

    def close(self) -> None:
        self.array = None
        Path(self.path).unlink(missing_ok=True)


class _Job:
    __slots__ = ("id", "n", "slots", "slot", "remaining", "error", "parts", "orphan", "labels", "indices")

    def __init__(self, job_id, n, slots, slot, chunks, indices, labels):
        self.id, self.n, self.slots, self.slot = job_id, n, slots, slot
        self.remaining, self.error, self.parts, self.orphan = chunks, None, {}, False
        self.indices, self.labels = indices, labels

    @property
    def done(self) -> bool:
        return self.remaining == 0


class _Pool:
    """Worker processes, their task/result queues, and the jobs in flight."""

    def __init__(self, shard_paths: list[str], workers: int, start_method: str | None, where: str):
        if start_method is None:
            start_method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        if start_method == "fork":
            raise ValueError("start_method='fork' is refused: forking a process that has initialised JAX can deadlock")
        ctx = multiprocessing.get_context(start_method)
        self.workers, self.where = workers, where
        self.tasks, self.results, self.stop = ctx.Queue(), ctx.Queue(), ctx.Event()
        self.procs = [ctx.Process(target=worker_main, args=(self.tasks, self.results, self.stop, shard_paths),
                                  name=f"imagenet-decode-{i}", daemon=True) for i in range(workers)]
        self.jobs: dict[int, _Job] = {}
        self.slot_pools: list[_Slots] = []
        self._next = 0
        self.closed = False
        with _main_hidden():
            for p in self.procs:
                p.start()

    # -- submitting and collecting ------------------------------------------------------------------
    def submit(self, refs: np.ndarray, params: np.ndarray, slots: _Slots | None, indices, labels) -> _Job:
        """Queue one batch; ``slots`` (with a free slot) receives it, else it comes back through the queue."""
        n = len(refs)
        slot = slots.free.pop(0) if slots is not None else None
        chunk = max(1, min(32, -(-n // (2 * self.workers))))
        starts = list(range(0, n, chunk)) or [0]
        job = _Job(self._next, n, slots, slot, len(starts), indices, labels)
        self._next += 1
        self.jobs[job.id] = job
        for s in starts:
            out = None if slots is None else (slots.path, slot * slots.rows + s)
            self.tasks.put((job.id, s, refs[s:s + chunk], params[s:s + chunk], out))
        return job

    def _receive(self, timeout: float) -> bool:
        try:
            job_id, start, error, images = self.results.get(timeout=timeout)
        except queue.Empty:
            return False
        job = self.jobs.get(job_id)
        if job is None:
            return True
        job.remaining -= 1
        if error is not None and job.error is None:
            job.error = error
        if images is not None:
            job.parts[start] = images
        if job.done:
            del self.jobs[job_id]
            if job.orphan:
                self._release(job)
        return True

    def poll(self) -> None:
        while self._receive(0.0):
            pass

    def _check_alive(self) -> None:
        dead = [p for p in self.procs if not p.is_alive()]
        if dead:
            raise RuntimeError(f"ImageNet decode worker {dead[0].name} exited (code {dead[0].exitcode}); "
                               "out of memory, or killed?")

    def wait(self, job: _Job) -> None:
        while not job.done:
            if not self._receive(1.0):
                self._check_alive()

    def wait_for_slot(self, slots: _Slots) -> bool:
        """Block until ``slots`` has a free slot; False if none can come free (all held by finished jobs)."""
        while not slots.free:
            if not any(j.slots is slots for j in self.jobs.values()):
                return False
            if not self._receive(1.0):
                self._check_alive()
        return True

    def _release(self, job: _Job) -> None:
        if job.slots is not None and job.slot is not None:
            job.slots.free.append(job.slot)
            job.slot = None

    def take(self, job: _Job) -> np.ndarray:
        """The job's images (float32 NHWC), copied out of its slot, which is then free again."""
        self.wait(job)
        try:
            if job.error is not None:
                raise DataError(f"ImageNet: {job.error}; the shard is corrupt: " + REBUILD.format(dir=self.where))
            if job.slots is None:
                return np.concatenate([job.parts[s] for s in sorted(job.parts)]) if job.parts else \
                    np.empty((0, *IMAGE_SHAPE), np.float32)
            return np.array(job.slots.array[job.slot, :job.n])
        finally:
            self._release(job)

    def orphan(self, job: _Job) -> None:
        """Give up on a job: its slot comes free once the workers are done with it."""
        if job.done:
            self._release(job)
        else:
            job.orphan = True

    def new_slots(self, rows: int, count: int) -> _Slots:
        slots = _Slots(rows, count)
        self.slot_pools.append(slots)
        return slots

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.stop.set()
        for _ in self.procs:
            try:
                self.tasks.put_nowait(None)
            except (ValueError, OSError, queue.Full):
                pass
        deadline = time.monotonic() + 3.0
        for p in self.procs:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
        for p in self.procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=1.0)
        for q in (self.tasks, self.results):
            q.cancel_join_thread()
            q.close()
        for slots in self.slot_pools:
            slots.close()
        self.jobs.clear()


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
        self._pool: _Pool | None = None
        self._finalizer = None
        self._stream = None
        self._depth = self.prefetch
        self._train_slots: _Slots | None = None
        self._train_jobs: dict[int, _Job] = {}
        self._eval_slots: dict[int, _Slots] = {}
        self.closed = False

    # -- sizes ---------------------------------------------------------------------------------------
    @property
    def train_size(self) -> int:
        return int(len(self._train))

    @property
    def test_size(self) -> int:
        return int(len(self._val))

    # -- the worker pool (started on first use) ------------------------------------------------------
    def _get_pool(self) -> _Pool:
        if self.closed:
            raise RuntimeError("this ImageNetDataset is closed")
        if self._pool is None:
            self._pool = _Pool(self._shards, self.workers, self.start_method, self.origin)
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

    def _submit_train(self, pool: _Pool, indices: np.ndarray, k: int, block: bool) -> _Job | None:
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
        pending: deque[_Job] = deque()
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
