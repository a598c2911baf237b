"""Orbax checkpoints of everything that determines a run's future.

A checkpoint at step s holds the state after s updates: the train-state pytree (params,
batch stats, optimizer state, RNG keys) plus JSON bookkeeping (data-stream cursor, elapsed
time, metrics-log offset and the digest of the log up to it). Saves are synchronous so that a
preemption signal handled at a step boundary leaves a complete checkpoint before the process
exits. Each step also gets ``llqr_digest.json`` (SHA-256 of its arrays and meta), written last:
``restore_verified`` trusts a step only if it reads back to that digest with finite parameters
and the live metrics log still matches; a step that does not is moved to ``<work>/quarantine/``
and the next older one is tried, because orbax restores flipped bits without complaint.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from ..atomic import write_text
from ..config.hashing import canonical_json

logging.getLogger("absl").setLevel(logging.WARNING)

DIGEST = "llqr_digest.json"
QUARANTINE = "quarantine"


class NoIntactCheckpoint(RuntimeError):
    """Every saved step failed verification; resuming would continue from corrupt state."""


def state_digest(state, meta: dict) -> str:
    """SHA-256 over the leaves (dtype, shape, bytes, in tree order) and the canonical meta JSON."""
    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(state):
        array = np.asarray(jax.device_get(leaf))
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(canonical_json(meta).encode())
    return digest.hexdigest()


def prefix_sha256(path: Path, size: int) -> str | None:
    """SHA-256 of the first ``size`` bytes of ``path``; None if the file is shorter or missing."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(size)
    except FileNotFoundError:
        return None
    return hashlib.sha256(head).hexdigest() if len(head) == size else None


def _all_finite(tree) -> bool:
    return all(bool(np.all(np.isfinite(np.asarray(jax.device_get(x)))))
               for x in jax.tree_util.tree_leaves(tree) if jax.numpy.issubdtype(x.dtype, jax.numpy.inexact))


def step_problem(recorded: dict | None, state, meta: dict, metrics_log: Path | None) -> tuple[str, str] | None:
    """(folder tag, message) saying why a restored step cannot be resumed, or None if it can."""
    if recorded is None:
        return "no-digest", f"has no {DIGEST} (cut off while saving, or written by an older llqr)"
    if recorded.get("sha256") != state_digest(state, meta):
        return "digest-mismatch", "does not match its digest (the files changed after saving)"
    if not _all_finite(state["params"]):
        return "non-finite", "holds non-finite parameters"
    if metrics_log is not None and prefix_sha256(metrics_log, meta["metrics_offset"]) != meta.get("metrics_sha256"):
        return "metrics-mismatch", f"does not match the live metrics log {metrics_log} (changed or truncated)"
    return None


class Checkpointer:
    def __init__(self, directory: Path, keep: int = 2):
        self.directory = Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False, create=True)
        self._mgr = ocp.CheckpointManager(self.directory, options=self._options)

    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def save(self, step: int, state, meta: dict) -> None:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self._mgr.save(step, args=args, force=True)
        self._mgr.wait_until_finished()
        write_text(self.directory / str(step) / DIGEST, json.dumps({"sha256": state_digest(state, meta)}))

    def restore(self, step: int, like_state):
        """Restore onto the structure (and dtypes/shapes) of ``like_state``."""
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like_state)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        out = self._mgr.restore(step, args=args)
        return out["state"], out["meta"]

    def restore_verified(self, like_state, metrics_log: Path | None = None, out=print):
        """(step, state, meta) of the newest step that passes ``step_problem``, or None when nothing
        (complete) was saved. Failing steps are moved aside, each with one line naming it; when all
        fail and one of them was damaged (not merely cut off while saving), NoIntactCheckpoint
        names the folder to delete."""
        for step in sorted(self._mgr.all_steps(), reverse=True):
            try:
                state, meta = self.restore(step, like_state)
                problem = step_problem(self._recorded(step), state, meta, metrics_log)
            except Exception as exc:  # noqa: BLE001 - any read failure means: try the older step
                problem = "unreadable", f"cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
            if problem is None:
                return step, state, meta
            tag, message = problem
            moved = self._quarantine(step, tag)
            out(f"checkpoint step {step} {message}: moved to {moved}; trying the next older step")
        bad = self.directory.parent / QUARANTINE
        # a step cut off while saving (no digest yet: a kill during the save) is an unfinished
        # save, not damage: with nothing older the run starts again; damaged steps need a person
        if bad.is_dir() and any(not p.name.startswith("step-") or "-no-digest" not in p.name for p in bad.iterdir()):
            raise NoIntactCheckpoint(
                f"no intact checkpoint left in {self.directory} (failed steps are in {bad}); delete "
                f"{self.directory.parent} to train this cell from step 0")
        return None

    def _recorded(self, step: int) -> dict | None:
        try:
            return json.loads((self.directory / str(step) / DIGEST).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _quarantine(self, step: int, tag: str) -> Path:
        """Move step ``step`` out of the orbax folder (orbax would list it again) and reload the manager."""
        bad = self.directory.parent / QUARANTINE
        bad.mkdir(parents=True, exist_ok=True)
        target, n = bad / f"step-{step}-{tag}", 1
        while target.exists():
            n += 1
            target = bad / f"step-{step}-{tag}-{n}"
        self._mgr.close()
        (self.directory / str(step)).rename(target)
        self._mgr = ocp.CheckpointManager(self.directory, options=self._options)
        return target

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
