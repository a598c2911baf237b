"""The golden cells: expand tests/golden/cells.yaml, run each cell the way the workflow does, and
reduce its outputs to what must not change when the runner's code is reorganised.

Timing and memory fields (wall clock, ms per step, the peak-memory columns: machine- and
XLA-version-specific) are dropped; everything else in summary.json and
metrics.jsonl is kept, together with the cell's id and rule params. ``tests/golden/record.py``
writes ``expected.json`` from these functions; ``tests/test_golden.py`` compares against it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import signal
from pathlib import Path

HERE = Path(__file__).resolve().parent
CELLS_YAML = HERE / "cells.yaml"
BEST_JSON = HERE / "best.json"
EXPECTED = HERE / "expected.json"
TIMING_KEYS = frozenset({"elapsed_s", "wall_time_s", "ms_per_step",
                         "peak_memory_bytes", "peak_memory_source", "step_memory_bytes"})
TUNED, RESUMED = "tuned", "resumed"  # labels run through the tune and preemption paths


def golden_cells() -> dict:
    """label -> matrix Cell, in the order of cells.yaml."""
    from llqr.workflow.matrix import expand, load_workflow_config

    matrix = expand(load_workflow_config(CELLS_YAML))
    out = {}
    for surface in matrix.surfaces.values():
        for entry in surface.entries:
            out[next(iter(entry.labels.values()))] = matrix.cells[entry.cell_id]
    return out


def machine() -> dict:
    """What makes XLA's CPU code (and so the last bits of a result) machine-specific."""
    import jax
    import jaxlib

    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "model name")):
                flags += line + "\n"
                if line.startswith("flags"):
                    break
    except OSError:
        flags = platform.processor()
    return {"cpu": hashlib.sha256(flags.encode()).hexdigest()[:16], "machine": platform.machine(),
            "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


def prepare_data(root: Path) -> Path:
    """The digits set and the tiny synthetic translation set under ``root``; returns the data root."""
    from fixtures.iwslt import prepare_translation_data
    from llqr.data import digits, synth_corpus

    data = root / "data"
    if not (data / "digits" / digits.FILENAME).exists():
        digits.prepare(data / "digits" / digits.FILENAME)
    if not (data / "synth_de_en").exists():
        raw = synth_corpus.write_archive(root / "raw" / "de-en.tgz", pairs=240, segs=4)
        prepare_translation_data(raw, data / "synth_de_en", merges=60)
    return data


def run_cell(label: str, cell, root: Path, data_root: Path) -> dict:
    """Train ``cell`` under ``root`` as the workflow would and return its reduced outputs."""
    from llqr.config import build_config
    from llqr.train.loop import run
    from llqr.workflow.train_job import train_from_workflow

    results, ckpts = root / "results", root / "checkpoints"
    if label == TUNED:  # the train rule's entry point, with a study's best.json on top
        rc = train_from_workflow(cell.config_json, cell.id, results_dir=results, checkpoints_dir=ckpts,
                                 data_root=data_root, log_path=root / "logs" / f"{label}.log", tuned=str(BEST_JSON),
                                 settings=cell.settings)
        assert rc == 0, (root / "logs" / f"{label}.log").read_text()
    else:
        cfg = build_config({**json.loads(cell.config_json), **cell.settings})
        kw = dict(cell_id=cell.id, results_dir=results, checkpoints_dir=ckpts, data_root=data_root)
        if label == RESUMED:  # SIGTERM ourselves at the step-30 report, then run again to resume
            from llqr.train.loop import Preempted

            def out(line):
                if "step 30/" in line:
                    os.kill(os.getpid(), signal.SIGTERM)

            try:
                run(cfg, out=out, **kw)
                raise AssertionError("the run was not preempted")
            except Preempted as exc:
                assert exc.step == 31, exc.step
            lines: list = []
            run(cfg, out=lines.append, **kw)
            assert any("resuming from checkpoint at step 31" in line for line in lines), lines
        else:
            run(cfg, out=lambda _line: None, **kw)
    return reduce_outputs(cell, results / "cells" / cell.id)


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def reduce_outputs(cell, out_dir: Path) -> dict:
    summary = json.loads((out_dir / "summary.json").read_text())
    metrics = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"id": cell.id, "params": json.loads(cell.config_json), "settings": cell.settings,
            "summary": _strip(summary), "metrics": _strip(metrics)}
