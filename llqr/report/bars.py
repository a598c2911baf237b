"""A ``kind: bars`` surface: the final metric (mean ± std over the ok seeds) as grouped bars, one panel per
scheduler family, as the HyperbolicLR study's paper/result_plot.py draws its results.

``bar_axis`` names the axis whose labels are the study's scheduler codes (or the LR-free Prodigy and
DAdapt); ``llqr.config.schedule_families.study_family_group`` puts each in its panel (Traditional,
Cyclic/Warmup, Hyperbolic, LR-free; anything else in Other). Within a panel the x groups are the
``budget_axis`` labels (one group without it) and a bar per code. One row of panels per preset and
label of any other axis. The table is the grid's, with the family group per position in the CSV.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..config.schedule_families import OTHER_GROUP, STUDY_FAMILY_GROUPS, study_family_group
from .figures import mark_no_data, palette
from .formats import to_latex, to_markdown
from .layout import label_order, ordered_keys, rows_matching, variant_name
from .tables import layout, pivot

GROUP_ORDER = [g for g, _ in STUDY_FAMILY_GROUPS] + [OTHER_GROUP]


def bar_groups(surface: dict) -> list:
    """[(family group, [labels of bar_axis in declared order])] for the groups that have labels."""
    labels = label_order(surface)[surface["bar_axis"]]
    found = {g: [lab for lab in labels if study_family_group(lab) == g] for g in GROUP_ORDER}
    return [(g, labs) for g, labs in found.items() if labs]


def log_scale(metric: str) -> bool:
    """Losses span decades (the study draws them on a log axis); accuracies and the rest are linear."""
    return metric.endswith("loss")


def render_bars(surface: dict, table: pd.DataFrame, excluded: list) -> dict:
    """{csv, md, tex, figure} of a ``bars`` surface."""
    grid = pivot(table, surface)
    csv = table.assign(group=[study_family_group(lab) for lab in table[surface["bar_axis"]]])
    return {"csv": csv.to_csv(index=False), "md": to_markdown(grid, surface, excluded),
            "tex": to_latex(grid, surface, excluded), "figure": bars_figure(surface, table)}


def bars_figure(surface: dict, table: pd.DataFrame) -> Figure:
    axis, budget = surface["bar_axis"], surface.get("budget_axis")
    order = label_order(surface)
    row_keys = [k for k in layout(surface) if k not in (axis, budget)]
    rows = ordered_keys(table.to_dict("records"), row_keys, order) if not table.empty else [()]
    groups = bar_groups(surface)
    xs = order[budget] if budget else [None]
    fig = Figure(figsize=(3.2 * len(groups) + 1.0, 2.8 * len(rows) + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(surface["title"], fontsize="medium")
    panels = fig.subplots(len(rows), len(groups), squeeze=False, sharey="row")
    for r, key in enumerate(rows):
        mine = rows_matching(table, row_keys, key)
        for c, (group, labels) in enumerate(groups):
            ax = panels[r, c]
            ax.set_title(f"{variant_name(key)}: {group}" if key else group, fontsize="small")
            width = 0.8 / len(labels)
            drawn = False
            for i, (label, color) in enumerate(zip(labels, palette(len(labels)))):
                at = mine[mine[axis] == label]
                means = [_final(at, budget, x, "final_mean") for x in xs]
                stds = [_final(at, budget, x, "final_std") for x in xs]
                if np.isfinite(means).any():
                    drawn = True
                ax.bar(np.arange(len(xs)) + i * width, means, width, yerr=np.nan_to_num(stds), capsize=2,
                       color=color, label=label)
            ax.set_xticks(np.arange(len(xs)) + width * (len(labels) - 1) / 2,
                          [str(x) for x in xs] if budget else [surface["metric"]])
            if budget:
                ax.set_xlabel(f"epoch budget ({budget})", fontsize="x-small")
            if log_scale(surface["metric"]):
                ax.set_yscale("log")
            if c == 0:
                ax.set_ylabel(f"final {surface['metric']}", fontsize="x-small")
            ax.legend(fontsize="xx-small", title=group, title_fontsize="xx-small")
            if not drawn:
                mark_no_data(ax)
    return fig


def _final(rows: pd.DataFrame, budget, x, column: str) -> float:
    """The position's value at budget label ``x`` (NaN where it has no ok seed)."""
    at = rows if budget is None else rows[rows[budget] == x]
    at = at[at["n_ok"] > 0]
    return float(at[column].iloc[0]) if len(at) else float("nan")
