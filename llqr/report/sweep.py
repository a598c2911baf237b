"""Sweep surfaces: final values against a numeric axis on log axes (the linear scaling rule's
accuracy and noise statistics against the batch size).

One panel per metric of the surface's ``metrics`` (default: its metric), one line per preset and
combination of the other axes, the seeds' mean with a min-max bar. The x axis is log2 because the
sweeps double; noise statistics (G_t, N_t and their ratio span decades) get a log y axis too.
The table is the grid's: the surface metric per position.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .collect import ENTRY_COLUMNS, entries_frame
from .figures import mark_no_data, palette, status_suffix
from .layout import label_order, ordered_keys, rows_matching, variant_name

LOG_Y_METRICS = ("noise_G", "noise_N", "noise_ratio")
MAX_COLUMNS = 3


def sweep_points(entries: pd.DataFrame, axis: str) -> pd.DataFrame:
    """Per position: the sweep value, the mean/min/max of the final values over the ok seeds."""
    ok = entries[entries["status"] == "ok"].dropna(subset=["final"])
    keys = [c for c in entries.columns if c not in ENTRY_COLUMNS]  # preset and the axes
    if ok.empty:
        return pd.DataFrame(columns=[*keys, "x", "mean", "min", "max"])
    stats = ok.groupby(keys, sort=False)["final"].agg(["mean", "min", "max"]).reset_index()
    stats["x"] = stats[axis].astype(float)
    return stats.sort_values("x", kind="stable")


def _panel(ax, metric: str, surface: dict, entries: pd.DataFrame, lines: list, others: list, colors) -> None:
    axis = surface["sweep_axis"]
    ax.set_title(metric)
    ax.set_xlabel(axis.replace("_", " "))
    ax.set_xscale("log", base=2)
    if metric in LOG_Y_METRICS:
        ax.set_yscale("log")
    points = sweep_points(entries, axis)
    handles = []
    for line, color in zip(lines, colors):
        mine = rows_matching(points, ["preset", *others], line)
        runs = rows_matching(entries, ["preset", *others], line)
        label = variant_name(line) + status_suffix(list(runs["status"]))
        positive = mine[mine["mean"] > 0] if metric in LOG_Y_METRICS else mine
        if positive.empty:
            handles.append(Line2D([], [], color=color, linestyle="--", alpha=0.4, label=f"{label} (no data)"))
            continue
        err = np.vstack([positive["mean"] - positive["min"], positive["max"] - positive["mean"]])
        handles.append(ax.errorbar(positive["x"], positive["mean"], yerr=err, color=color, marker="o", markersize=3,
                                   capsize=2, label=label))
    if all(isinstance(h, Line2D) for h in handles):
        mark_no_data(ax)
    ax.legend(handles=handles, fontsize="x-small")


def sweep_figure(surface: dict, frames: dict) -> Figure:
    """``frames``: metric -> ``collect.entries_frame`` output for that metric."""
    metrics = list(frames)
    order = label_order(surface)
    others = [a for a in surface["axes"] if a != surface["sweep_axis"]]
    ncols = min(MAX_COLUMNS, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig = Figure(figsize=(4.8 * ncols, 3.8 * nrows + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(surface["title"], fontsize="medium", wrap=True)
    panels = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in panels[len(metrics):]:
        ax.set_visible(False)
    first = frames[metrics[0]]
    lines = ordered_keys(first.to_dict("records"), ["preset", *others], order) if not first.empty else []
    colors = palette(max(len(lines), 1))
    for ax, metric in zip(panels, metrics):
        _panel(ax, metric, surface, frames[metric], lines, others, colors)
    return fig


def sweep_frames(surface: dict, results_dir) -> dict:
    """The entries of every metric the figure shows, each read as the surface reads its own."""
    return {m: entries_frame({**surface, "metric": m, "mode": surface["modes"][m]}, results_dir)
            for m in surface["metrics"]}
