"""A cell's folders and its declared outputs: summary.json, metrics.jsonl, record.json."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..atomic import write_text
from . import records
from .checkpoint import PREVIOUS


@dataclass(frozen=True)
class CellPaths:
    results: Path  # declared outputs: summary.json, metrics.jsonl, record.json
    root: Path  # checkpoints/<cell>: its attempts, the previous result; never deleted by Snakemake
    key: str = ""  # the attempt: config + input fingerprint (fingerprint.attempt_key)

    @classmethod
    def for_cell(cls, cell_id: str, results_dir, checkpoints_dir) -> CellPaths:
        return cls(Path(results_dir) / "cells" / cell_id, Path(checkpoints_dir) / cell_id)

    @property
    def work(self) -> Path:
        """This attempt's checkpoints and live metrics log."""
        return self.root / self.key

    @property
    def previous(self) -> Path:
        return self.root / PREVIOUS


def best(series: list[dict], key: str, mode: str = "max") -> dict | None:
    """The best value of ``key`` over ``series`` and the first step that reached it."""
    points = [(e[key], e["step"]) for e in series if key in e]
    if not points:
        return None
    pick = max if mode == "max" else min
    value = pick(v for v, _ in points)
    return {"value": value, "step": min(s for v, s in points if v == value)}


def summary(cell_id, status, final, best_point, steps, total_steps, wall, *, diverged_at=None, message=None,
            metric="test_accuracy", mode="max") -> dict:
    return {
        "cell": cell_id,
        "status": status,
        "metric": metric,
        "mode": mode,
        "final": final,
        "best": best_point,
        "steps": steps,
        "total_steps": total_steps,
        "wall_time_s": round(wall, 3),
        "diverged_at_step": diverged_at,
        "message": message,
    }


def write_outputs(paths: CellPaths, result: dict, record: dict, live_metrics: Path | None) -> None:
    """metrics first, summary last: a present summary.json means the other outputs are complete."""
    if live_metrics is not None:
        records.copy_atomic(live_metrics, paths.results / "metrics.jsonl")
    else:  # no training happened (data error): an empty log keeps the declared outputs complete
        write_text(paths.results / "metrics.jsonl", "")
    full_record = dict(record, status=result["status"], final=result["final"], best=result["best"])
    full_record.update(total_steps=result["total_steps"], spe=result.get("spe"), wall_time_s=result["wall_time_s"])
    records.write_json_atomic(paths.results / "record.json", full_record)
    records.write_json_atomic(paths.results / "summary.json", result)
