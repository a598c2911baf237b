"""Peak device memory of the training step, for the optimizer studies' memory columns.

Two sources. XLA's analysis of the compiled step (every backend, CPU included): its simulated peak
of live buffers when the backend reports one, else arguments + outputs − donated aliases + temps,
an upper bound. And the allocator's ``peak_bytes_in_use`` where the device keeps statistics (GPU):
the whole process's high-water mark (evaluations, factor refreshes, datasets on device included).
``peak_memory_bytes`` is the allocator's figure when there is one, else the compiled one;
``peak_memory_source`` says which. Lowering the step again hits jit's in-memory cache (no compile).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def compiled_bytes(analysis) -> int | None:
    """Peak bytes of one compiled program from its ``memory_analysis()`` (None when unavailable)."""
    if analysis is None:
        return None
    peak = getattr(analysis, "peak_memory_in_bytes", 0) or 0
    if peak > 0:
        return int(peak)
    total = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes - analysis.alias_size_in_bytes
             + analysis.temp_size_in_bytes)
    return int(total) if total > 0 else None


def jitted_bytes(jitted, *args) -> int | None:
    """``compiled_bytes`` of ``jitted`` at these arguments (only their shapes and dtypes matter)."""
    try:
        return compiled_bytes(jitted.lower(*args).compile().memory_analysis())
    except (NotImplementedError, AttributeError):  # a backend without a memory analysis
        return None


def device_peak_bytes() -> int | None:
    """The largest ``peak_bytes_in_use`` over the local devices, where the backend keeps it."""
    peaks = []
    for device in jax.local_devices():
        try:
            stats = device.memory_stats()
        except (NotImplementedError, RuntimeError):
            stats = None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks) if peaks else None


def step_memory(loop) -> dict:
    """The final metrics' memory fields for the step this process ran last (none when it ran no
    step: a run resumed at its final checkpoint)."""
    if loop.batch is None:
        return {}
    cfg, last = loop.cfg, loop.total_steps - 2
    sam_from = cfg.start_sam_after_step or 0
    if loop.steps.sam is not None and last >= sam_from:
        compiled = jitted_bytes(loop.steps.sam, loop.state, loop.batch, jnp.zeros((), jnp.float32))
    else:
        compiled = jitted_bytes(loop.steps.train, loop.state, loop.batch)
    device = device_peak_bytes()
    out = {} if compiled is None else {"step_memory_bytes": compiled}
    if device is not None:
        out.update(peak_memory_bytes=device, peak_memory_source="device")
    elif compiled is not None:
        out.update(peak_memory_bytes=compiled, peak_memory_source="compiled")
    return out
