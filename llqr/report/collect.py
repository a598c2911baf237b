"""Read what the training cells left on disk into DataFrames.

Nothing here fails on a partial run, so tables can be rendered while a sweep is still going:
a cell with no directory or no summary yet is "missing", an unreadable summary is "failed",
and an unparseable metrics line (e.g. one being written) is skipped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

# Per-entry columns added after "preset" and the axes; an axis may not reuse these names.
ENTRY_COLUMNS = ["seed", "cell", "status", "final", "best", "final_step", "best_step", "diverged_at_step", "message"]
CURVE_COLUMNS = ["cell", "event", "step", "value"]
# Events whose lines carry each metric; metrics not listed come from evaluations ('eval' and 'final_eval'),
# as the noise statistics and measure_kfac_agreement's kfac_agreement_cos/_rel do.
_EVENTS = {"train_loss": ("train",), "train_accuracy": ("train",), "step_accuracy": ("train",)}
_EVAL_EVENTS = ("eval", "final_eval")
# Metrics computed from a logged one: test error (%) as the SINGD study plots it.
DERIVED = {"test_error": ("test_accuracy", lambda accuracy: 100.0 - accuracy)}


def _value(record: dict, metric: str):
    """The metric's finite value in one metrics.jsonl record (a derived metric from its source), or None."""
    source, transform = DERIVED.get(metric, (metric, None))
    value = _number(record.get(source))
    return transform(value) if transform and value is not None else value


def cell_dir(results_dir, cell_id: str) -> Path:
    """Where a cell writes; the id contains slashes, so this is a nested path."""
    return Path(results_dir) / "cells" / cell_id


def _number(value):
    """A finite float, or None (JSON null, NaN and infinities all mean 'no usable value')."""
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _point(record) -> tuple:
    if not isinstance(record, dict):
        return None, None
    step = record.get("step")
    return _number(record.get("value")), (int(step) if isinstance(step, (int, float)) else None)


def _from_curve(results_dir, cell_id: str, metric: str, mode: str) -> dict:
    """Final and best of ``metric`` from metrics.jsonl: the summary only records its own metric."""
    curve = read_curve(results_dir, cell_id, metric).sort_values("step", kind="stable")
    out = dict.fromkeys(["final", "final_step", "best", "best_step"])
    if curve.empty:
        return out
    ends = curve if metric in _EVENTS else curve[curve["event"] == "final_eval"]
    if not ends.empty:
        out["final"], out["final_step"] = float(ends["value"].iloc[-1]), int(ends["step"].iloc[-1])
    best = curve.loc[curve["value"].idxmax() if mode == "max" else curve["value"].idxmin()]
    out["best"], out["best_step"] = float(best["value"]), int(best["step"])
    return out


def read_summary(results_dir, cell_id: str, metric: str | None = None, mode: str = "max") -> dict:
    """One cell's outcome with a fixed set of keys, whatever state its directory is in.

    ``final``/``best`` are for ``metric`` (default: the summary's own); a different metric is
    read from the cell's metrics.jsonl, so a surface on test_loss reports losses, not accuracies.
    """
    path = cell_dir(results_dir, cell_id) / "summary.json"
    out = dict.fromkeys(ENTRY_COLUMNS[2:])
    if not path.is_file():
        out["status"] = "missing"
        out["message"] = "no summary.json yet" if path.parent.is_dir() else None
        return out
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        out.update(status="failed", message=f"unreadable {path} ({exc}); delete it and rerun the cell")
        return out
    if not data.get("status"):
        out.update(status="failed", message=f"{path} has no status; delete it and rerun the cell")
        return out
    if metric is None or data.get("metric") == metric:
        out["final"], out["final_step"] = _point(data.get("final"))
        out["best"], out["best_step"] = _point(data.get("best"))
    else:
        out.update(_from_curve(results_dir, cell_id, metric, mode))
    div = data.get("diverged_at_step")
    out["diverged_at_step"] = int(div) if isinstance(div, (int, float)) and not isinstance(div, bool) else None
    out["status"] = str(data["status"])
    out["message"] = data.get("message")
    if out["status"] == "ok" and out["final"] is None:
        # An "ok" run without a final value cannot enter a mean; count it as failed, visibly.
        out.update(status="failed", message=f"status ok but no finite final {metric or 'value'}")
    return out


def _check_axis_names(axes) -> None:
    clash = sorted(set(axes) & {"preset", "metric", "seeds", "cells", *ENTRY_COLUMNS})
    if clash:
        raise ValueError(f"axis names {clash} clash with report columns; rename the axes")


def entries_frame(surface: dict, results_dir) -> pd.DataFrame:
    """One row per surface entry (table position x seed) with its cell's outcome.

    A cell shared by several entries is read once and appears in each of them.
    """
    axes = list(surface["axes"])
    _check_axis_names(axes)
    ids = dict.fromkeys(e["cell"] for e in surface["entries"])
    summaries = {cid: read_summary(results_dir, cid, surface["metric"], surface["mode"]) for cid in ids}
    rows = [
        {
            "preset": e["preset"],
            **{axis: str(e["labels"][axis]) for axis in axes},
            "seed": int(e["seed"]),
            "cell": e["cell"],
            **summaries[e["cell"]],
        }
        for e in surface["entries"]
    ]
    frame = pd.DataFrame(rows, columns=["preset", *axes, *ENTRY_COLUMNS])
    frame = frame.astype({"final": float, "best": float, "seed": int})
    return frame.astype({c: "Int64" for c in ("final_step", "best_step", "diverged_at_step")})


def read_curve(results_dir, cell_id: str, metric: str, x: str = "step") -> pd.DataFrame:
    """The metric's logged points for one cell (columns event, step, value); empty if none.
    ``x="effective_step"`` puts the events' effective step (SVAG: step / l; else the step) in
    the step column."""
    path = cell_dir(results_dir, cell_id) / "metrics.jsonl"
    events = _EVENTS.get(metric, _EVAL_EVENTS)
    points = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict) or record.get("event") not in events:
                continue
            value, step = _value(record, metric), record.get(x, record.get("step"))
            if value is not None and isinstance(step, (int, float)):
                step = int(step) if x == "step" else float(step)
                points.append({"cell": cell_id, "event": record["event"], "step": step, "value": value})
    return pd.DataFrame(points, columns=CURVE_COLUMNS)


def curves_frame(surface: dict, results_dir) -> pd.DataFrame:
    """Every cell's curve of the surface metric, stacked (columns cell, event, step, value)."""
    ids = dict.fromkeys(e["cell"] for e in surface["entries"])
    frames = [read_curve(results_dir, cid, surface["metric"], surface.get("x", "step")) for cid in ids]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=CURVE_COLUMNS).astype({"step": int, "value": float})
    return pd.concat(frames, ignore_index=True)


def one_point_per_step(points: pd.DataFrame) -> pd.DataFrame:
    """Curve points with one value per (cell, step): a final evaluation supersedes an evaluation
    logged at the same step of the same run."""
    ranked = points.assign(_final=points["event"] == "final_eval").sort_values(["cell", "step", "_final"])
    return ranked.drop_duplicates(["cell", "step"], keep="last").drop(columns="_final")
