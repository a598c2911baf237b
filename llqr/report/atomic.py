"""Atomic writes of report files (tables via ``llqr.atomic``, figures with stable bytes)."""

from __future__ import annotations

from pathlib import Path

from ..atomic import write_atomic, write_text

__all__ = ["write_atomic", "write_figure", "write_text"]


def write_figure(fig, path, dpi: int = 150) -> Path:
    """Save a matplotlib figure in the format its suffix names, without a timestamp (stable bytes)."""
    fmt = Path(path).suffix.lstrip(".").lower()
    metadata = {"CreationDate": None} if fmt == "pdf" else None
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi, metadata=metadata))
