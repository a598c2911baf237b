"""Surfaces over epoch budgets (the HyperbolicLR study): the final metric vs budget with a power-law
fit (kind ``budget``), and the smoothed learning-curve-difference matrices (kind ``slcd``).

A *group* is one position without the budget axis (preset and the other axes' labels, e.g. one
schedule); its runs at the different budgets are what the measures compare.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .budget_stats import power_law_fit, slcd_matrix, upper_mean
from .collect import one_point_per_step
from .figures import mark_no_data, palette
from .formats import simple_latex, simple_markdown, to_latex, to_markdown
from .layout import label_order, ordered_keys, rows_matching, variant_name
from .tables import layout, pivot

FIT_COLUMNS = ["fit_on", "fit_a", "fit_b", "fit_r2", "fit_n"]
# Accuracies in percent approach 100, so a power law in N fits their error 100 − accuracy (a·N^b with
# b < 0, as for a loss); the study itself fits nothing and compares raw accuracies (its bars and its
# accuracy SLCD, paper/analyze/src/bin/acc.rs).
PERCENT_ACCURACIES = ("test_accuracy", "train_accuracy", "step_accuracy")


def fit_target(metric: str) -> tuple:
    """(name, transform) of what the power law is fitted to: the error for a percent accuracy, else
    the metric itself."""
    if metric in PERCENT_ACCURACIES:
        return f"100 - {metric}", lambda values: 100.0 - np.asarray(values, dtype=float)
    return metric, lambda values: np.asarray(values, dtype=float)


def group_keys(surface: dict) -> list:
    return [k for k in layout(surface) if k != surface["budget_axis"]]


def budget_fits(table: pd.DataFrame, surface: dict) -> pd.DataFrame:
    """One row per group: the power law of its final means over the budgets."""
    keys, axis = group_keys(surface), surface["budget_axis"]
    order = label_order(surface)
    target, transform = fit_target(surface["metric"])
    rows = []
    for key in ordered_keys(table.to_dict("records"), keys, order):
        mine = rows_matching(table, keys, key)
        fit = power_law_fit([float(b) for b in mine[axis]], transform(mine["final_mean"]))
        rows.append({**dict(zip(keys, key)), "fit_on": target, **{f"fit_{k}": v for k, v in fit.items()}})
    return pd.DataFrame(rows, columns=[*keys, *FIT_COLUMNS])


def _fit_rows(fits: pd.DataFrame, keys: list) -> list:
    def num(v, fmt):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    return [[*(str(r[k]) for k in keys), num(r["fit_a"], ".4g"), num(r["fit_b"], ".4f"), num(r["fit_r2"], ".4f"),
             str(int(r["fit_n"]))] for r in fits.to_dict("records")]


def render_budget(surface: dict, entries: pd.DataFrame, table: pd.DataFrame, excluded: list) -> dict:
    """{csv, md, tex, figure} of a ``budget`` surface: the usual table plus the power-law fit per group."""
    fits = budget_fits(table, surface)
    keys = group_keys(surface)
    merged = table.merge(fits, on=keys, how="left") if keys else table.assign(**fits.iloc[0].to_dict())
    grid = pivot(table, surface)
    header = [*keys, "a", "b", "R²", "budgets"]
    note = (f"Power law {fit_target(surface['metric'])[0]} ≈ a·N^b over the epoch budgets N "
            f"({surface['budget_axis']}), least squares in log-log space; R² in log space.")
    md = (to_markdown(grid, surface, excluded) + "\n## Power-law fit\n\n"
          + simple_markdown(header, _fit_rows(fits, keys)))
    md += "\n" + note + "\n"
    tex = to_latex(grid, surface, excluded) + "\n" + simple_latex(
        [h.replace("²", "^2") for h in header], _fit_rows(fits, keys), note)
    return {"csv": merged.to_csv(index=False), "md": md, "tex": tex, "figure": budget_figure(surface, table, fits)}


def budget_figure(surface: dict, table: pd.DataFrame, fits: pd.DataFrame) -> Figure:
    """What the power law fits (the metric, or an accuracy's error) vs budget on log-log axes: a point
    per budget (± std), the fitted power law dashed."""
    presets = label_order(surface)["preset"] or [""]
    fig = Figure(figsize=(5.2 * len(presets), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(surface["title"], fontsize="medium")
    keys, axis = group_keys(surface), surface["budget_axis"]
    others = [k for k in keys if k != "preset"]
    target, transform = fit_target(surface["metric"])
    for ax, preset in zip(fig.subplots(1, len(presets), squeeze=False).ravel(), presets):
        ax.set_title(preset)
        ax.set_xlabel(f"epoch budget ({axis})")
        ax.set_ylabel(f"final {target}")
        mine = table[(table["preset"] == preset) & (table["n_ok"] > 0)]
        groups = ordered_keys(mine.to_dict("records"), others, label_order(surface)) if not mine.empty else []
        if not groups:
            mark_no_data(ax)
            continue
        for key, color in zip(groups, palette(len(groups))):
            rows = rows_matching(mine, others, key)
            x = rows[axis].astype(float).to_numpy()
            y, err = transform(rows["final_mean"]), rows["final_std"].fillna(0.0).to_numpy()
            fit = rows_matching(fits, ["preset", *others], (preset, *key)).iloc[0]
            label = variant_name(key) or surface["metric"]
            if np.isfinite(fit["fit_b"]):
                grid_x = np.geomspace(x.min(), x.max(), 50)
                ax.plot(grid_x, fit["fit_a"] * grid_x ** fit["fit_b"], "--", color=color, linewidth=1)
                label += f" (b={fit['fit_b']:.2f}, R²={fit['fit_r2']:.2f})"
            ax.errorbar(x, y, yerr=err, fmt="o", color=color, markersize=4, capsize=2, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(fontsize="x-small")
    return fig


# --- SLCD -----------------------------------------------------------------------------------------


def cell_curves(curves: pd.DataFrame) -> dict:
    """cell -> its evaluation curve; a final evaluation replaces an evaluation at the same point."""
    if curves.empty:
        return {}
    line = one_point_per_step(curves)
    return {cell: (g["step"].to_numpy(), g["value"].to_numpy()) for cell, g in line.groupby("cell")}


def _seed_mean(cells: list, by_cell: dict):
    """The seeds' mean curve over the points every seed has (None if no seed has a curve)."""
    frames = [pd.Series(by_cell[c][1], index=by_cell[c][0]) for c in cells if c in by_cell]
    if not frames:
        return None
    joined = pd.concat(frames, axis=1, join="inner").mean(axis=1)
    return joined.index.to_numpy(), joined.to_numpy()


def slcd_matrices(surface: dict, entries: pd.DataFrame, curves: pd.DataFrame) -> list:
    """[(group key, matrix)] in layout order, over the budget labels in declared order."""
    keys, axis = group_keys(surface), surface["budget_axis"]
    order = label_order(surface)
    budgets = order[axis]
    ok = entries[entries["status"] == "ok"]
    by_cell = cell_curves(curves)
    out = []
    for key in ordered_keys(entries.to_dict("records"), keys, order):
        mine = rows_matching(ok, keys, key)
        per_budget = [_seed_mean(list(mine[mine[axis] == b]["cell"]), by_cell) for b in budgets]
        out.append((key, slcd_matrix(per_budget)))
    return out


def render_slcd(surface: dict, entries: pd.DataFrame, curves: pd.DataFrame, excluded: list) -> dict:
    """{csv, md, tex, figure} of an ``slcd`` surface: per group, the SLCD of every budget pair."""
    keys, axis = group_keys(surface), surface["budget_axis"]
    budgets = label_order(surface)[axis]
    mats = slcd_matrices(surface, entries, curves)
    records = []
    for key, mat in mats:
        mean = upper_mean(mat)
        for i, j in zip(*np.triu_indices(len(budgets), 1)):
            records.append({**dict(zip(keys, key)), f"{axis}_a": budgets[i], f"{axis}_b": budgets[j],
                            "slcd": mat[i, j], "mean_slcd": mean})
    csv = pd.DataFrame(records, columns=[*keys, f"{axis}_a", f"{axis}_b", "slcd", "mean_slcd"]).to_csv(index=False)

    def num(v):
        return "-" if not np.isfinite(v) else f"{v:.4f}"

    note = (f"SLCD of the {surface['metric']} curves (x = {surface.get('x', 'step')}): Savitzky–Golay smoothing "
            "(window 9, order 2; shorter curves use their longest odd window), then the mean of |x−y|/(x+y) over "
            f"the points of the shorter budget; seeds' curves averaged first. Lower: the budgets' curves agree.")
    if surface["metric"] in PERCENT_ACCURACIES:  # the study's accuracy SLCD (acc.rs) uses the accuracy itself
        note += " On the accuracy itself, not its error, as the study does (the ratio does not depend on the unit)."
    summary = [[*(str(k) for k in key), num(upper_mean(mat))] for key, mat in mats]
    md = [f"# {surface['title']}", ""]
    if surface.get("caption"):
        md += [surface["caption"], ""]
    md += ["## Mean SLCD over budget pairs", "", simple_markdown([*keys, "mean SLCD"], summary), note, ""]
    tex = [simple_latex([*keys, "mean SLCD"], summary, f"{surface['title']}. {note}")]
    for key, mat in mats:
        name = variant_name(key) or "all"
        rows = [[budgets[i], *(num(mat[i, j]) for j in range(len(budgets)))] for i in range(len(budgets))]
        md += [f"## {name}", "", simple_markdown([axis, *budgets], rows)]
        tex.append(simple_latex([axis, *budgets], rows, f"SLCD matrix: {name}"))
    if excluded:
        md += ["Cells not in the curves:", ""] + [f"- `{cell}`: {reason}" for cell, reason in excluded] + [""]
    return {"csv": csv, "md": "\n".join(md), "tex": "\n".join(tex), "figure": slcd_figure(surface, mats, budgets)}


def slcd_figure(surface: dict, mats: list, budgets: list) -> Figure:
    """One annotated heatmap per group, on one colour scale so groups compare at a glance."""
    n = max(len(mats), 1)
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(3.4 * ncols + 0.8, 3.2 * nrows + 0.5), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(surface["title"], fontsize="medium")
    panels = fig.subplots(nrows, ncols, squeeze=False).ravel()
    finite = [m[np.isfinite(m)] for _, m in mats]
    vmax = max((float(v.max()) for v in finite if v.size), default=1.0) or 1.0
    image = None
    for ax, (key, mat) in zip(panels, mats):
        ax.set_title(variant_name(key) or "all", fontsize="small")
        image = ax.imshow(np.ma.masked_invalid(mat), cmap="viridis", vmin=0.0, vmax=vmax)
        ax.set_xticks(range(len(budgets)), budgets)
        ax.set_yticks(range(len(budgets)), budgets)
        ax.set_xlabel(surface["budget_axis"])
        for i in range(len(budgets)):
            for j in range(len(budgets)):
                if i != j and np.isfinite(mat[i, j]):
                    ax.text(j, i, f"{mat[i, j]:.3f}", ha="center", va="center", fontsize="x-small",
                            color="white" if mat[i, j] < 0.6 * vmax else "black")
    if not mats:
        mark_no_data(panels[0])
    for ax in panels[len(mats):]:
        ax.set_visible(False)
    if image is not None:
        fig.colorbar(image, ax=panels[: len(mats)].tolist(), shrink=0.8, label="SLCD")
    return fig

