"""One writer per cell: an exclusive lock file in ``checkpoints/<cell>/`` held for the whole run.

Without it a hand run of a cell the workflow is training (or a stale SLURM job beside its own
retry) resumes from the same checkpoint and both append to one metrics log. The lock records host,
pid and SLURM job id. A second writer is refused with a message naming the holder. A lock whose
process is gone on this host, or that an earlier run of this same SLURM job left (a requeue), is
taken over; one from another host only on request (``--take-over-lock`` or
``LLQR_TAKE_OVER_LOCK=1``), because from here we cannot tell whether that process still runs.
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

LOCK = "lock.json"
TAKE_OVER_ENV = "LLQR_TAKE_OVER_LOCK"


class CellLocked(RuntimeError):
    """Another process holds the cell's lock."""


def me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S")}


def describe(holder: dict) -> str:
    job = f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    return f"host {holder.get('host')} pid {holder.get('pid')}{job} (since {holder.get('since')})"


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return True
    return True


def takeover_reason(holder: dict, mine: dict, forced: bool) -> str | None:
    """Why ``holder``'s lock may be taken over by ``mine``, or None if it may not."""
    if holder.get("host") == mine["host"] and not _alive(holder.get("pid")):
        return "its process is gone"
    if holder.get("slurm_job_id") and holder.get("slurm_job_id") == mine["slurm_job_id"]:
        return "an earlier run of this SLURM job left it"
    if forced:
        return "taken over on request"
    return None


def _read(path: Path) -> dict | None:
    """The holder recorded in ``path``; {} if it is unreadable (a torn write); None if it is gone."""
    for _ in range(3):
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            time.sleep(0.1)  # its writer may be between creating and writing it
    return {}


@contextmanager
def cell_lock(folder: Path, take_over: bool = False, out=print):
    """Hold ``folder/lock.json`` for the body; CellLocked if a live writer holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path, mine = folder / LOCK, me()
    forced = take_over or os.environ.get(TAKE_OVER_ENV, "") not in ("", "0")
    for _ in range(5):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            if holder is None:
                continue  # released meanwhile
            reason = takeover_reason(holder, mine, forced) if holder else "the lock file is unreadable"
            if reason is None:
                raise CellLocked(
                    f"cell {folder} is being trained by {describe(holder)}: lock {path}. Wait for it; if that "
                    f"process is gone, delete {path} or run with --take-over-lock ({TAKE_OVER_ENV}=1)") from None
            _break(path, holder)
            out(f"took over the lock {path} from {describe(holder)}: {reason}")
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump(mine, fh)
        break
    else:
        raise CellLocked(f"could not lock {path}: other processes keep taking it")
    try:
        yield path
    finally:
        if (_read(path) or {}).get("pid") == mine["pid"] and (_read(path) or {}).get("host") == mine["host"]:
            path.unlink(missing_ok=True)


def _break(path: Path, holder: dict) -> None:
    """Remove the lock ``holder`` left, unless another process replaced it meanwhile."""
    aside = path.with_name(f".{LOCK}.{os.getpid()}")
    try:
        path.rename(aside)
    except FileNotFoundError:
        return
    if _read(aside) not in (holder, {}):  # someone else's fresh lock: put it back
        os.replace(aside, path)
        return
    aside.unlink(missing_ok=True)
