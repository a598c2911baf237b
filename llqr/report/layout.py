"""The order things are shown in: presets as the surface lists them, axis labels as declared.

Sorting alphabetically would scramble sweeps (e.g. "1e-3" before "3e-4" before "constant");
the config author's order is the meaningful one, so tables and figures both follow it.
"""

from __future__ import annotations

import pandas as pd


def label_order(surface: dict) -> dict:
    """Ordered labels for every layout key ("preset" and each axis)."""
    presets = list(dict.fromkeys(e["preset"] for e in surface["entries"]))
    return {"preset": presets, **{axis: [str(lab) for lab in labels] for axis, labels in surface["axes"].items()}}


def sort_by_layout(frame: pd.DataFrame, keys: list, order: dict) -> pd.DataFrame:
    """Stable sort of ``frame`` by ``keys``, each in its declared label order (unknown labels last)."""
    if not keys or frame.empty:
        return frame
    rank = {k: {lab: i for i, lab in enumerate(order[k])} for k in keys}
    def position(col):
        return col.map(rank[col.name]).fillna(len(rank[col.name]))

    return frame.sort_values(list(keys), key=position, kind="stable")


def ordered_keys(records: list, keys: list, order: dict) -> list:
    """Distinct tuples of ``keys`` over ``records`` (dicts), in layout order."""
    rank = {k: {lab: i for i, lab in enumerate(order[k])} for k in keys}
    distinct = dict.fromkeys(tuple(r[k] for k in keys) for r in records)
    return sorted(distinct, key=lambda t: tuple(rank[k].get(v, len(rank[k])) for k, v in zip(keys, t)))


def variant_name(labels) -> str:
    """How a combination of labels reads in headers and legends."""
    return " / ".join(str(lab) for lab in labels)


def rows_matching(frame: pd.DataFrame, keys: list, key: tuple) -> pd.DataFrame:
    """The rows of ``frame`` whose ``keys`` columns hold ``key`` (every row when there are no keys)."""
    mask = pd.Series(True, index=frame.index)
    for column, label in zip(keys, key):
        mask &= frame[column] == label
    return frame[mask]
