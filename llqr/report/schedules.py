"""A ``kind: schedules`` surface: the HyperbolicLR study's schedules at several epoch budgets, drawn from
the runner's schedule code with no training (numbers: ``llqr.report.schedule_curves``).

Figure: one panel per schedule (a line per budget, as paper/metric_plot.py draws them), then the decay
rate -dη/dt at the longest budget (03_decay_rate_analysis.py), ∫η against the budget
(04_cumulative_lr_budget.py) and the hyperbola h(n; N, U) with its asymptote (02_prop_1.py).
Table: ∫η per schedule and budget with the early-path gap, and η at a few epochs.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..config.schedule_families import HYPERBOLIC_FAMILIES, SCHEDULE_FAMILIES, study_family_group
from .figures import palette
from .formats import simple_latex, simple_markdown
from .schedule_curves import (
    decay_rate,
    early_gap,
    hyperbola_curves,
    lr_curve,
    lr_integral,
    step_values,
    values_at,
)

NCOLS = 4
LOG_Y = ("exp_hyperbolic", "warmup_exp_hyperbolic")  # drawn on a log axis, as the study draws EH


def all_values(spec: dict) -> dict:
    """code -> budget -> ``step_values``: each schedule evaluated once per budget."""
    keys = [(code, b) for code in spec["codes"] for b in spec["budgets"]]
    runs = step_values([(spec["settings"][code], b) for code, b in keys], spec["learning_rate"],
                       spec["steps_per_epoch"])
    out: dict = {code: {} for code in spec["codes"]}
    for (code, b), v in zip(keys, runs):
        out[code][b] = v
    return out


def schedule_table(spec: dict, values: dict) -> pd.DataFrame:
    """One row per schedule and budget: ∫η, its ratio to the longest budget's, the early gap, η at epochs."""
    lr, spe, budgets = spec["learning_rate"], spec["steps_per_epoch"], spec["budgets"]
    rows = []
    for code in spec["codes"]:
        setting = spec["settings"][code]
        integrals = {b: lr_integral(values[code][b], spe) for b in budgets}
        gap = early_gap(values[code], spe, lr)
        for b in budgets:
            at = values_at(values[code][b], spe, spec["at_epochs"])
            rows.append({"schedule": code, "family": setting["name"], "group": study_family_group(code), "budget": b,
                         "lr_integral": integrals[b], "integral_ratio": integrals[b] / integrals[max(budgets)],
                         "early_gap": gap, **{f"lr_at_{e}": v for e, v in zip(spec["at_epochs"], at)}})
    return pd.DataFrame(rows)


def _num(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def render_schedules(surface: dict) -> dict:
    """{csv, md, tex, figure} of a ``schedules`` surface."""
    spec = surface["schedules"]
    values = all_values(spec)
    table = schedule_table(spec, values)
    budgets, at = spec["budgets"], spec["at_epochs"]
    by_code = {code: rows for code, rows in table.groupby("schedule", sort=False)}
    integral_rows = [[code, rows["family"].iloc[0], *(_num(v) for v in rows["lr_integral"]),
                      _num(rows["early_gap"].iloc[0])] for code, rows in by_code.items()]
    integral_header = ["schedule", "family", *(f"N={b}" for b in budgets), "early gap"]
    at_rows = [[r["schedule"], str(r["budget"]), *(_num(r[f"lr_at_{e}"]) for e in at)]
               for r in table.to_dict("records")]
    at_header = ["schedule", "N", *(f"η({e})" for e in at)]
    note = (f"η0 = {spec['learning_rate']:g}, {spec['steps_per_epoch']} step(s) per epoch, values from the runner's "
            "schedule code (per-epoch families constant within an epoch). ∫η: the sum over the run's steps of η "
            f"× 1/steps-per-epoch (epochs × η). Early gap: max |η_N(t) − η_Nmax(t)| / η0 over t < {min(budgets)} "
            "epochs and the budgets N; small means the schedule's early path does not depend on the budget.")
    md = [f"# {surface['title']}", ""]
    if surface.get("caption"):
        md += [surface["caption"], ""]
    md += ["## ∫η dt over the run", "", simple_markdown(integral_header, integral_rows), note, "",
           "## η at epochs", "", simple_markdown(at_header, at_rows)]
    tex = [simple_latex(integral_header, integral_rows, f"{surface['title']}. {note}"),
           simple_latex(at_header, at_rows, "η at the first step of the listed epochs")]
    return {"csv": table.to_csv(index=False), "md": "\n".join(md), "tex": "\n".join(tex),
            "figure": schedules_figure(surface, values)}


def _curve_panel(ax, code: str, setting: dict, spec: dict, values: dict) -> None:
    ax.set_title(f"{code} ({setting['name']})", fontsize="small")
    for b, color in zip(spec["budgets"], palette(len(spec["budgets"]))):
        x, y = lr_curve(values[b], spec["steps_per_epoch"])
        ax.plot(x, y, color=color, linewidth=1, label=f"N={b}")
    if setting["name"] in LOG_Y:
        ax.set_yscale("log")
    ax.set_xlabel("epoch", fontsize="x-small")
    ax.tick_params(labelsize="x-small")


def _decay_panel(ax, spec: dict, values: dict) -> None:
    budget = max(spec["budgets"])
    ax.set_title(f"decay rate −dη/dt per epoch, N={budget}", fontsize="small")
    for code, color in zip(spec["codes"], palette(len(spec["codes"]))):
        rate = decay_rate(values[code][budget], spec["steps_per_epoch"])
        shown = np.where(rate > 0, rate, np.nan)  # a log axis: increases and flat stretches are left out
        if np.isfinite(shown).any():
            ax.plot(np.arange(budget), shown, color=color, linewidth=1, label=code)
    ax.set_yscale("log")
    ax.set_xlabel("epoch", fontsize="x-small")
    ax.legend(fontsize="xx-small", ncols=2)


def _integral_panel(ax, spec: dict, values: dict) -> None:
    ax.set_title("∫η dt over the run vs budget", fontsize="small")
    for code, color in zip(spec["codes"], palette(len(spec["codes"]))):
        integrals = [lr_integral(values[code][b], spec["steps_per_epoch"]) for b in spec["budgets"]]
        ax.plot(spec["budgets"], integrals, "o-", color=color, markersize=3, linewidth=1, label=code)
    ax.set_xlabel("epoch budget N", fontsize="x-small")
    ax.legend(fontsize="xx-small", ncols=2)


def hyperbola_upper(spec: dict) -> float:
    """U of the first hyperbolic schedule drawn, else the family default."""
    for code in spec["codes"]:
        if spec["settings"][code]["name"] in HYPERBOLIC_FAMILIES:
            return float(spec["settings"][code]["upper_bound"])
    return float(SCHEDULE_FAMILIES["hyperbolic"]["upper_bound"][0])


def _hyperbola_panel(ax, spec: dict) -> None:
    upper = hyperbola_upper(spec)
    curves, (n, line) = hyperbola_curves(spec["budgets"], upper)
    ax.set_title(f"h(n; N, U={upper:g}) and its asymptote 1 − n/U", fontsize="small")
    for (x, h), b, color in zip(curves, spec["budgets"], palette(len(spec["budgets"]))):
        ax.plot(x, h, color=color, linewidth=1, label=f"N={b}")
    ax.plot(n, line, ":", color="gray", linewidth=1, label="1 − n/U")
    ax.set_xlabel("epoch n", fontsize="x-small")
    ax.legend(fontsize="xx-small")


def schedules_figure(surface: dict, values: dict) -> Figure:
    spec = surface["schedules"]
    n = len(spec["codes"]) + 3
    nrows = math.ceil(n / NCOLS)
    fig = Figure(figsize=(3.3 * NCOLS, 2.6 * nrows + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(surface["title"], fontsize="medium")
    panels = fig.subplots(nrows, NCOLS, squeeze=False).ravel()
    for ax, code in zip(panels, spec["codes"]):
        _curve_panel(ax, code, spec["settings"][code], spec, values[code])
    panels[0].legend(fontsize="xx-small")
    k = len(spec["codes"])
    _decay_panel(panels[k], spec, values)
    _integral_panel(panels[k + 1], spec, values)
    _hyperbola_panel(panels[k + 2], spec)
    for ax in panels[k + 3:]:
        ax.set_visible(False)
    return fig
