"""Seeds aggregated into table positions, and the positions arranged as the surface's pivot.

A position is one combination of preset and axis labels. Its value is the mean and the sample
standard deviation (ddof=1, NaN for a single seed) over the seeds whose run finished "ok"; the
other seeds are counted, not averaged, so a partial or diverging sweep is reported as such.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .layout import label_order, ordered_keys, sort_by_layout

STAT_COLUMNS = ["metric", "final_mean", "final_std", "best_mean", "best_std",
                "n_ok", "n_seeds", "status", "seeds", "cells"]  # fmt: skip


def layout(surface: dict) -> list:
    """The keys that identify a position: row axes, then column axes."""
    return [*surface["rows"], *surface["columns"]]


def position_status(statuses: list) -> str:
    """"ok" if every seed finished, "partial" if some did, else what happened to all of them."""
    n_ok = sum(s == "ok" for s in statuses)
    if statuses and n_ok == len(statuses):
        return "ok"
    if n_ok:
        return "partial"
    return "+".join(sorted(set(statuses))) or "missing"


def _aggregate(group: pd.DataFrame, metric: str) -> dict:
    ok = group[group["status"] == "ok"]
    return {
        "metric": metric,
        "final_mean": ok["final"].mean(),
        "final_std": ok["final"].std(),
        "best_mean": ok["best"].mean(),
        "best_std": ok["best"].std(),
        "n_ok": len(ok),
        "n_seeds": len(group),
        "status": position_status(list(group["status"])),
        "seeds": ";".join(str(s) for s in group["seed"]),
        "cells": ";".join(group["cell"]),
    }


def summarise(entries: pd.DataFrame, surface: dict) -> pd.DataFrame:
    """The long-form table: one row per position, in layout order (written as table.csv)."""
    keys = layout(surface)
    ordered = sort_by_layout(entries, [*keys, "seed"], {**label_order(surface), "seed": list(surface["seeds"])})
    groups = ordered.groupby(keys, sort=False) if not ordered.empty else []
    records = [
        {**dict(zip(keys, key if isinstance(key, tuple) else (key,))), **_aggregate(group, surface["metric"])}
        for key, group in groups
    ]
    table = pd.DataFrame(records, columns=[*keys, *STAT_COLUMNS])
    return table.astype({"final_mean": float, "final_std": float, "best_mean": float, "best_std": float,
                         "n_ok": int, "n_seeds": int})  # fmt: skip


def best_flags(table: pd.DataFrame, surface: dict) -> pd.Series:
    """Which positions hold the best final mean among their comparable peers.

    Peers share a preset (different tasks are not comparable) and a table column. Nothing is
    marked where fewer than two peers have a value: a lone number is not "best" of anything.
    """
    flags = pd.Series(False, index=table.index)
    scored = table[table["n_ok"] > 0]
    peers = ["preset", *[c for c in surface["columns"] if c != "preset"]]
    for _, group in scored.groupby(peers, sort=False) if not scored.empty else []:
        if len(group) < 2:
            continue
        values = group["final_mean"]
        target = values.max() if surface["mode"] == "max" else values.min()
        flags[group.index[values == target]] = True
    return flags


@dataclass(frozen=True)
class Pivot:
    """Rows x columns of positions as the surface lays them out; a cell is a position record or None."""

    row_axes: list
    column_axes: list
    row_keys: list  # tuples of row-axis labels, in order
    column_keys: list  # tuples of column-axis labels, in order ([()] when there are no column axes)
    cells: dict  # (row_key, column_key) -> dict of the position's table row plus "best"


def pivot(table: pd.DataFrame, surface: dict) -> Pivot:
    """Arrange the long table as the surface's rows x columns."""
    rows, columns = list(surface["rows"]), list(surface["columns"])
    records = table.assign(best=best_flags(table, surface)).to_dict("records")
    order = label_order(surface)
    cells = {(tuple(r[a] for a in rows), tuple(r[a] for a in columns)): r for r in records}
    return Pivot(
        row_axes=rows,
        column_axes=columns,
        row_keys=ordered_keys(records, rows, order),
        column_keys=ordered_keys(records, columns, order) if columns else [()],
        cells=cells,
    )
