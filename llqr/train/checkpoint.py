"""Orbax checkpoints of everything that determines a run's future.

A checkpoint at step s holds the state after s updates: the train-state pytree (params,
batch stats, optimizer state, RNG keys) plus JSON bookkeeping (data-stream cursor, elapsed
time, metrics-log offset). Saves are synchronous so that a preemption signal handled at a
step boundary leaves a complete checkpoint before the process exits.
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import orbax.checkpoint as ocp

logging.getLogger("absl").setLevel(logging.WARNING)


class Checkpointer:
    def __init__(self, directory: Path, keep: int = 2):
        self.directory = Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False, create=True)
        self._mgr = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def save(self, step: int, state, meta: dict) -> None:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self._mgr.save(step, args=args, force=True)
        self._mgr.wait_until_finished()

    def restore(self, step: int, like_state):
        """Restore onto the structure (and dtypes/shapes) of ``like_state``."""
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like_state)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        out = self._mgr.restore(step, args=args)
        return out["state"], out["meta"]

    def close(self) -> None:
        self._mgr.close()


PREVIOUS = "previous"  # checkpoints/<cell>/previous: the last finished attempt, kept but never resumed


def retire_attempt(work: Path) -> Path:
    """Move a finished attempt's folder aside as ``previous`` (replacing an older one) and return
    where it went. Only unfinished attempts are resumed, so a re-run (``--forcerun``, changed
    inputs) trains from step 0. Killed before this rename, a retry resumes the same attempt at
    its final step: that is the same key, genuinely interrupted, and ends with the same outputs."""
    import shutil

    work = Path(work)
    target = work.parent / PREVIOUS
    if not work.is_dir():
        return target
    if target.exists():
        doomed = work.parent / f".{PREVIOUS}.old"
        shutil.rmtree(doomed, ignore_errors=True)
        target.rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    work.rename(target)
    return target
