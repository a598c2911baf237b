"""A workflow job's log: every progress line to stdout (the SLURM or Snakemake log) and to the
rule's ``log:`` file, flushed at once so a killed job leaves what it had said."""

from __future__ import annotations

import contextlib
from pathlib import Path


@contextlib.contextmanager
def job_log(path):
    """Yields ``(out, log)``: ``out(line)`` prints and appends a line; ``log`` takes tracebacks."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as log:

        def out(line: str) -> None:
            print(line, flush=True)
            log.write(line + "\n")
            log.flush()

        yield out, log
