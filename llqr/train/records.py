"""Run outputs: atomic JSON writes, the run record's provenance fields."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

from ..atomic import write_atomic, write_text
from ..config.presets import REPO_ROOT


def write_json_atomic(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def copy_atomic(src: Path, dst: Path) -> None:
    write_atomic(dst, lambda tmp: shutil.copyfile(src, tmp))


def git_state(repo: Path = REPO_ROOT) -> dict:
    """Commit and dirty flag of the code that ran (null outside a git checkout)."""

    def git(*args):
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else None

    try:
        commit = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    except (OSError, subprocess.SubprocessError):
        commit, status = None, None
    return {"commit": commit, "dirty": None if commit is None else bool(status)}


def accelerator() -> dict:
    import jax

    devices = jax.devices()
    return {
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind if devices else None,
        "device_count": len(devices),
    }


def host_info() -> dict:
    keys = ("SLURM_JOB_ID", "SLURM_RESTART_COUNT", "SLURM_JOB_PARTITION")
    slurm = {k: os.environ[k] for k in keys if k in os.environ}
    return {"host": socket.gethostname(), "slurm": slurm or None}
