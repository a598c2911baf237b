"""JAX's persistent compilation cache, on by default for workflow jobs.

Every cell is a fresh process, and on CPU compiling dominates a small cell: a digits MLP run of
57 steps spends 4 of its 5 seconds in XLA (the jitted model init alone takes 2). Cells of one
model share their init and evaluation programs exactly, so a cache on disk turns those into
lookups for every job after the first (5.4 s -> 2.0 s per cell measured on the demo).
"""

from __future__ import annotations

import os
from pathlib import Path


def enable_compilation_cache(directory, min_compile_secs: float = 0.2) -> str | None:
    """Point JAX's cache at ``directory`` unless the user chose one (JAX_COMPILATION_CACHE_DIR)
    or switched it off (LLQR_JAX_CACHE=0). Returns the directory in use, or None."""
    if os.environ.get("LLQR_JAX_CACHE", "1") == "0":
        return None
    import jax

    chosen = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(Path(directory).resolve())
    jax.config.update("jax_compilation_cache_dir", chosen)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_secs)
    return chosen
