"""The loop's bookkeeping: the metrics log, the step timer, the stop signals, the divergence check."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import jax
import numpy as np


class Diverged(Exception):
    """A non-finite training loss at ``step``: the run ends with status diverged."""

    def __init__(self, step: int):
        super().__init__(f"non-finite loss at step {step}")
        self.step = step


class PendingLosses:
    """Device losses not yet read back: checked for NaN/inf in one transfer at each sync point."""

    def __init__(self):
        self.items: list = []

    def add(self, step: int, loss) -> None:
        self.items.append((step, loss))

    def check(self) -> None:
        """Raise ``Diverged`` at the first non-finite loss since the last check."""
        if not self.items:
            return
        values = np.asarray(jax.device_get([loss for _s, loss in self.items]))
        bad = np.flatnonzero(~np.isfinite(values))
        first = self.items[bad[0]][0] if bad.size else None
        self.items.clear()
        if first is not None:
            raise Diverged(first)


class SignalFlag:
    """Turns SIGTERM/SIGUSR1/SIGINT (Ctrl-C) into a flag the loop reads at step boundaries; a
    second Ctrl-C stops at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self._old = {}

    def __enter__(self):
        try:
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._old = {}
        return self

    def _handle(self, signum, _frame):
        if signum == signal.SIGINT and self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        print(f"received signal {signal.Signals(signum).name}: checkpointing at the next step boundary", flush=True)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def fmt_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class StepTimer:
    """Wall milliseconds per update, amortised over the windows between two host syncs (the
    logging points), with evaluations, P fits and checkpoints taken out and the first window
    (compilation) left out; it includes the periodic Kronecker-factor refreshes."""

    def __init__(self):
        self.mark, self.mark_step, self.excluded = None, None, 0.0
        self.seconds, self.steps = 0.0, 0

    def exclude(self, seconds: float) -> None:
        self.excluded += seconds

    def sync(self, step: int) -> None:
        """Called right after the device finished step ``step``."""
        now = time.perf_counter()
        if self.mark is not None:
            self.seconds += now - self.mark - self.excluded
            self.steps += step - self.mark_step
        self.mark, self.mark_step, self.excluded = now, step, 0.0

    @property
    def ms_per_step(self) -> float | None:
        return 1000.0 * self.seconds / self.steps if self.steps else None


class MetricsLog:
    """Append-only JSONL in the work dir; truncated to the checkpoint's offset on resume."""

    def __init__(self, path: Path, offset: int | None):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if offset is None:
            path.write_text("")
        else:
            with open(path, "r+b") as fh:
                fh.truncate(offset)
        self._fh = open(path, "a")

    @property
    def offset(self) -> int:
        self._fh.flush()
        return self._fh.tell()

    def events(self) -> list[dict]:
        self._fh.flush()
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def write(self, event: dict) -> None:
        self._fh.write(json.dumps(event, sort_keys=True) + "\n")
        self._fh.flush()

    def close(self):
        self._fh.close()
