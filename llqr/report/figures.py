"""Curves of the surface metric: one panel per preset, one line per variant.

Seeds are averaged per logged step with a min-max band, so the spread shows without a line
per seed. Runs that diverged end in an "x"; variants without any data stay in the legend
with their status, so a gap in the figure is never silent. Built on a bare Agg-backed
``Figure`` (no pyplot): no global state, safe inside Snakemake jobs and without a display.
"""

from __future__ import annotations

import math
import textwrap

import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .collect import one_point_per_step
from .layout import label_order, ordered_keys, rows_matching, variant_name

MAX_COLUMNS = 4
INSIDE_LEGEND = 6  # more variants than this: the legend goes under the panel, in two columns


def palette(n: int) -> list:
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def mark_no_data(ax) -> None:
    ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="0.5", fontsize="large")


def status_suffix(statuses: list) -> str:
    """Legend note for seeds that did not finish ok: " (diverged)" or " (1/2 diverged, 1/2 missing)"."""
    counts = pd.Series(statuses, dtype=object).value_counts(sort=False)
    n = len(statuses)
    parts = [status if count == n else f"{count}/{n} {status}" for status, count in counts.items() if status != "ok"]
    return f" ({', '.join(parts)})" if parts else ""


def _draw_variant(ax, runs: pd.DataFrame, points: pd.DataFrame, label: str, color) -> Line2D:
    """Plot one variant (mean line, band, final point, divergence marks); return its legend handle."""
    statuses = list(runs["status"])
    suffix = status_suffix(statuses)
    if points.empty:
        return Line2D([], [], color=color, alpha=0.4, linestyle="--", label=f"{label}{suffix or ' (no curve)'}")
    line = one_point_per_step(points)
    stats = line.groupby("step")["value"].agg(["mean", "min", "max"])
    ax.plot(stats.index, stats["mean"], color=color, linewidth=1.5, marker="." if len(stats) == 1 else None)
    if (stats["min"] < stats["max"]).any():
        ax.fill_between(stats.index, stats["min"], stats["max"], color=color, alpha=0.2, linewidth=0)
    final = points[points["event"] == "final_eval"]
    if not final.empty:
        ax.plot([final["step"].mean()], [final["value"].mean()], "o", markersize=4, color=color)
    for _, run in runs[runs["status"] == "diverged"].iterrows():
        own = line[line["cell"] == run["cell"]]
        if own.empty:
            continue
        last = own.sort_values("step").iloc[-1]
        step = last["step"] if pd.isna(run["diverged_at_step"]) else run["diverged_at_step"]
        ax.plot([step], [last["value"]], marker="x", markersize=8, markeredgewidth=2, color=color, linestyle="none")
    marker = "x" if "diverged" in statuses else None
    return Line2D([], [], color=color, marker=marker, label=f"{label}{suffix}")


def _panel(ax, title: str, surface: dict, axes: list, variants: list, entries: pd.DataFrame, points: pd.DataFrame,
           colors) -> None:
    """One panel: ``entries``/``points`` already restricted to it; a line per variant of ``axes``."""
    ax.set_title(title)
    ax.set_xlabel(surface.get("x", "step").replace("_", " "))
    ax.set_ylabel(surface["metric"])
    handles, drawn = [], False
    for variant, color in zip(variants, colors):
        runs = rows_matching(entries, axes, variant)
        if runs.empty:
            continue
        mine = rows_matching(points, axes, variant)
        handles.append(_draw_variant(ax, runs, mine, variant_name(variant) or "default", color))
        drawn = drawn or not mine.empty
    if not drawn:
        mark_no_data(ax)
    if len(handles) > INSIDE_LEGEND:
        ax.legend(handles=handles, fontsize="x-small", ncols=2, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    elif handles:
        ax.legend(handles=handles, fontsize="small")


def curves_figure(surface: dict, entries: pd.DataFrame, curves: pd.DataFrame) -> Figure:
    """The surface's figure from ``collect.entries_frame`` and ``collect.curves_frame`` output: a
    panel per preset (and per label of the ``panels`` axis, if the surface names one)."""
    order = label_order(surface)
    split = surface.get("panels")
    axes = [a for a in surface["axes"] if a != split]
    panel_keys = [(p, lab) for p in order["preset"] for lab in order[split]] if split else [
        (p,) for p in order["preset"]]
    ncols = min(MAX_COLUMNS, max(len(panel_keys), 1))
    nrows = math.ceil(max(len(panel_keys), 1) / ncols)
    variants = ordered_keys(entries.to_dict("records"), axes, order)
    below = math.ceil(len(variants) / 2) * 0.17 if len(variants) > INSIDE_LEGEND else 0.0  # room for legends
    fig = Figure(figsize=(4.6 * ncols, (3.6 + below) * nrows + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    # wrap long titles to the figure width (~11 characters per inch at this size)
    fig.suptitle(textwrap.fill(surface["title"], width=max(30, int(11 * 4.6 * ncols))), fontsize="medium")
    panels = fig.subplots(nrows, ncols, squeeze=False).ravel()
    if not panel_keys:
        mark_no_data(panels[0])
        return fig
    for ax in panels[len(panel_keys):]:
        ax.set_visible(False)
    runs = entries[["cell", "preset", *surface["axes"]]].drop_duplicates()
    points = curves.merge(runs, on="cell")  # a shared cell's curve serves every position it fills
    colors = palette(len(variants))
    panel_axes = ["preset", *([split] if split else [])]
    for ax, key in zip(panels, panel_keys):
        title = key[0] if len(order["preset"]) > 1 or not split else ""
        title = " / ".join(t for t in (title, *(f"{split}={k}" for k in key[1:])) if t)
        _panel(ax, title, surface, axes, variants, rows_matching(entries, panel_axes, key),
               rows_matching(points, panel_axes, key), colors)
    return fig
