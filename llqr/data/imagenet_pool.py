"""The ImageNet decoding pool: worker processes (imagenet_decode.worker_main) that write normalised
crops into shared-memory slots, their queues, and the jobs in flight (used by llqr.data.imagenet).

Workers start with ``forkserver`` (else ``spawn``; ``fork`` is refused: a process that has
initialised JAX is never forked) and read images with ``os.pread`` from the shards; a batch
crosses no pipe, the main process copies it out of its slot once.
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
from pathlib import Path

import numpy as np

from .errors import DataError
from .imagenet_decode import IMAGE_SHAPE, worker_main
from .imagenet_shards import REBUILD

IMAGE_BYTES = int(np.prod(IMAGE_SHAPE)) * 4
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


class Slots:
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


class Job:
    __slots__ = ("id", "n", "slots", "slot", "remaining", "error", "parts", "orphan", "labels", "indices")

    def __init__(self, job_id, n, slots, slot, chunks, indices, labels):
        self.id, self.n, self.slots, self.slot = job_id, n, slots, slot
        self.remaining, self.error, self.parts, self.orphan = chunks, None, {}, False
        self.indices, self.labels = indices, labels

    @property
    def done(self) -> bool:
        return self.remaining == 0


class Pool:
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
        self.jobs: dict[int, Job] = {}
        self.slot_pools: list[Slots] = []
        self._next = 0
        self.closed = False
        with _main_hidden():
            for p in self.procs:
                p.start()

    # -- submitting and collecting ------------------------------------------------------------------
    def submit(self, refs: np.ndarray, params: np.ndarray, slots: Slots | None, indices, labels) -> Job:
        """Queue one batch; ``slots`` (with a free slot) receives it, else it comes back through the queue."""
        n = len(refs)
        slot = slots.free.pop(0) if slots is not None else None
        chunk = max(1, min(32, -(-n // (2 * self.workers))))
        starts = list(range(0, n, chunk)) or [0]
        job = Job(self._next, n, slots, slot, len(starts), indices, labels)
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

    def wait(self, job: Job) -> None:
        while not job.done:
            if not self._receive(1.0):
                self._check_alive()

    def wait_for_slot(self, slots: Slots) -> bool:
        """Block until ``slots`` has a free slot; False if none can come free (all held by finished jobs)."""
        while not slots.free:
            if not any(j.slots is slots for j in self.jobs.values()):
                return False
            if not self._receive(1.0):
                self._check_alive()
        return True

    def _release(self, job: Job) -> None:
        if job.slots is not None and job.slot is not None:
            job.slots.free.append(job.slot)
            job.slot = None

    def take(self, job: Job) -> np.ndarray:
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

    def orphan(self, job: Job) -> None:
        """Give up on a job: its slot comes free once the workers are done with it."""
        if job.done:
            self._release(job)
        else:
            job.orphan = True

    def new_slots(self, rows: int, count: int) -> Slots:
        slots = Slots(rows, count)
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
