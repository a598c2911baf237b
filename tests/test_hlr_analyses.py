"""The HyperbolicLR study's analyses as surfaces: schedule-only surfaces (no training), results as bars
grouped by scheduler family, and the budget and SLCD kinds on an accuracy metric."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import yaml

from conftest import REPO, run_snakemake, write_yaml
from llqr.config import ConfigError
from llqr.config.schedule_families import STUDY_CODES
from llqr.config.validate import coerce_schedule
from llqr.report import render_surface
from llqr.report.bars import bar_groups
from llqr.report.budget_stats import power_law_fit
from llqr.report.schedule_curves import decay_rate, lr_integral, step_values
from llqr.train.schedules import build_schedule
from llqr.workflow.matrix import expand
from llqr.workflow.plan import plan, render
from llqr.workflow.validator import check_workflow

SCHEDULES = {"kind": "schedules", "group": "demo", "title": "schedules", "schedules": ["N", "WEH"],
             "budgets": [4, 8], "learning_rate": 0.5, "steps_per_epoch": 3, "at_epochs": [0, 2, 6],
             "schedule_params": {"WEH": {"upper_bound": 10}}}


def _surface(spec=SCHEDULES) -> dict:
    return check_workflow({"surfaces": {"s": dict(spec)}}).surfaces["s"].to_dict()


def _setting(code, **params):
    return coerce_schedule("lr_scheduler", {"name": STUDY_CODES[code], **params})


def test_schedule_surface_renders_without_cells(tmp_path):
    surface = _surface()
    assert surface["entries"] == [] and surface["schedules"]["codes"] == SCHEDULES["schedules"]
    paths = render_surface(surface, tmp_path / "no-results", tmp_path / "out")
    assert all(p.stat().st_size > 0 for p in paths.values())
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [(r["schedule"], r["budget"]) for r in rows] == [(c, b) for c in SCHEDULES["schedules"] for b in "48"]
    n4 = next(r for r in rows if r["schedule"] == "N" and r["budget"] == "4")
    assert float(n4["lr_integral"]) == pytest.approx(0.5 * 4) and float(n4["early_gap"]) == 0
    assert n4["lr_at_6"] == ""  # epoch 6 is past a 4-epoch run
    assert "## η at epochs" in paths["md"].read_text()
    assert json.loads(paths["seeds"].read_text()) == {"seeds": [], "cells": {}}


@pytest.mark.parametrize("bad, why", [
    ({"presets": ["digits-mlp"]}, "no training cells"),
    ({"budgets": [4, 20]}, "upper_bound=10 must be >= total_epochs=20"),
    ({"schedule_params": {"H": {"upper_bound": 10}}}, "schedule_params.H: not one of"),
    ({"schedule_params": {"WEH": {"power": 2}}}, "unknown key 'schedule_params.WEH.power'"),
])
def test_schedule_spec_is_checked(bad, why):
    with pytest.raises(ConfigError, match=why):
        _surface({**SCHEDULES, **bad})


def test_curves_are_the_runners_schedule_values():
    runs = [(_setting("P"), 5), (_setting("OC"), 9), (_setting("WH"), 9)]  # per epoch, per batch, warmup
    for (setting, n), values in zip(runs, step_values(runs, 0.1, 4)):
        fn = build_schedule(setting, 0.1, float(n), 4.0)  # what llqr.train.loop builds for lr_scheduler
        assert values.shape == (n * 4 + 1,)
        for step in (0, 3, 4, 7, 2 * n, n * 4 - 1, n * 4):
            # float32, compiled here as in the train step: within rounding of the eager value
            assert values[step] == pytest.approx(float(fn(step)), rel=1e-5, abs=1e-9), (setting["name"], n, step)


def test_integral_of_constant_and_decay_rate_of_linear():
    (constant, linear) = step_values([(_setting("N"), 30), (_setting("L", end_factor=0.1), 30)], 0.3, 2)
    assert lr_integral(constant, 2) == pytest.approx(0.3 * 30, rel=1e-6)
    rate = decay_rate(linear, 2)
    assert rate.shape == (30,) and np.allclose(rate, 0.3 * 0.9 / 30, rtol=1e-4)


def test_plan_prices_a_schedule_surface_at_zero_cells():
    result = plan({"surfaces": {"s": dict(SCHEDULES)}}, ["demo"], {})
    assert result["surfaces"][0]["cells"] == 0 and result["total"]["cells"] == 0
    assert "s (demo): 0 cells" in render(result, summary=True)


@pytest.mark.slow
def test_snakemake_renders_a_config_holding_only_a_schedule_surface(tmp_path):
    demo = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["surfaces"]
    config = write_yaml(tmp_path / "only.yaml", {"surfaces": {**dict.fromkeys(demo), "sched": dict(SCHEDULES)}})
    run_snakemake(["--cores", "1", "--configfile", str(config)], tmp_path)
    out = tmp_path / "results" / "surfaces" / "sched"
    assert not (tmp_path / "results" / "cells").exists()
    for name in ("table.csv", "table.md", "table.tex", "figure.png", "figure.pdf", "seeds.json"):
        assert (out / name).stat().st_size > 0, name


# --- bars ------------------------------------------------------------------------------------------

BARS_AXES = {"schedule": [{"label": lab, "set": {"lr_scheduler": name}} for lab, name in
                          (("N", "constant"), ("H", "hyperbolic"), ("OC", "one_cycle"), ("C", "cosine"))]
             + [{"label": "prodigy", "set": {"optimizer": "prodigy", "learning_rate": 1.0}}],
             "budget": [{"label": "1", "set": {"total_epochs": 1}}, {"label": "2", "set": {"total_epochs": 2}}]}


def _bars_surface() -> dict:
    spec = {"kind": "bars", "bar_axis": "schedule", "budget_axis": "budget", "metric": "test_loss",
            "presets": ["digits-mlp-smoke"], "seeds": [1, 2], "axes": BARS_AXES,
            "table": {"rows": ["preset", "schedule"], "columns": ["budget"]}}
    return expand({"surfaces": {"b": spec}}).surfaces["b"].to_dict()


def _write_cell(results, cell, final, curve=(), metric="test_accuracy"):
    d = results / "cells" / cell
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({"cell": cell, "status": "ok", "metric": metric,
                                                "final": {"value": final, "step": 9}}))
    lines = [{"event": "eval", "step": s, **v} for s, v in curve]
    (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_bars_group_by_scheduler_family(tmp_path):
    surface = _bars_surface()
    assert bar_groups(surface) == [("Traditional", ["N", "C"]), ("Cyclic/Warmup", ["OC"]),
                                   ("Hyperbolic", ["H"]), ("LR-free", ["prodigy"])]
    for i, e in enumerate(surface["entries"]):
        if e["labels"]["schedule"] != "C":  # C never ran: its bars are missing, not zero
            _write_cell(tmp_path / "results", e["cell"], 0.1 + i / 100, metric="test_loss")
    paths = render_surface(surface, tmp_path / "results", tmp_path / "out")
    rows = list(csv.DictReader(paths["csv"].open()))
    assert {(r["schedule"], r["group"]) for r in rows} == {("N", "Traditional"), ("C", "Traditional"),
                                                          ("OC", "Cyclic/Warmup"), ("H", "Hyperbolic"),
                                                          ("prodigy", "LR-free")}
    assert all(r["n_ok"] == ("0" if r["schedule"] == "C" else "2") for r in rows)


def test_bars_need_their_axis():
    spec = {"kind": "bars", "presets": ["digits-mlp-smoke"], "seeds": [1], "axes": BARS_AXES}
    with pytest.raises(ConfigError, match="kind bars needs it"):
        expand({"surfaces": {"b": spec}})


# --- accuracy: SLCD on the accuracy itself, power law on its error ----------------------------------

def _acc(t, a, b, c):  # quadratics: Savitzky–Golay of order 2 returns them unchanged
    return a + b * t - c * t * t


def _accuracy_surface(kind: str) -> dict:
    spec = {"kind": kind, "metric": "test_accuracy", "budget_axis": "budget", "presets": ["digits-mlp-smoke"],
            "seeds": [1], "axes": {"budget": [{"label": str(n), "set": {"total_epochs": n}} for n in (1, 2, 4)]},
            "x": "step"}
    return expand({"surfaces": {kind: spec}}).surfaces[kind].to_dict()


def test_accuracy_slcd_is_the_studys_curve_difference_of_the_accuracies(tmp_path):
    surface = _accuracy_surface("slcd")
    coeffs = {"1": (50, 2.0, 0.05), "2": (52, 1.8, 0.04), "4": (49, 2.1, 0.03)}
    steps = np.arange(1, 13)
    for e in surface["entries"]:
        acc = _acc(steps[: 6 * int(e["labels"]["budget"]) // 2], *coeffs[e["labels"]["budget"]])
        _write_cell(tmp_path / "r", e["cell"], float(acc[-1]),
                    [(int(s), {"test_accuracy": float(v)}) for s, v in zip(steps, acc)])
    paths = render_surface(surface, tmp_path / "r", tmp_path / "out")
    pairs = {(r["budget_a"], r["budget_b"]): float(r["slcd"]) for r in csv.DictReader(paths["csv"].open())}
    for (a, b), got in pairs.items():
        n = 3 * int(a)  # the shorter run's points
        x, y = _acc(steps[:n], *coeffs[a]), _acc(steps[:n], *coeffs[b])
        assert got == pytest.approx(np.mean(np.abs(x - y) / (x + y)), rel=1e-9)
        err = np.mean(np.abs(x - y) / ((100 - x) + (100 - y)))
        assert not math.isclose(got, err, rel_tol=0.1)  # the error's SLCD is another number
    assert "On the accuracy itself" in paths["md"].read_text()


def test_accuracy_budget_fit_is_a_power_law_of_the_error(tmp_path):
    surface = _accuracy_surface("budget")
    for e in surface["entries"]:
        n = int(e["labels"]["budget"])
        _write_cell(tmp_path / "r", e["cell"], 100 - 20 * n ** -0.5)
    paths = render_surface(surface, tmp_path / "r", tmp_path / "out")
    rows = list(csv.DictReader(paths["csv"].open()))
    assert {r["fit_on"] for r in rows} == {"100 - test_accuracy"}
    assert float(rows[0]["fit_b"]) == pytest.approx(-0.5) and float(rows[0]["fit_a"]) == pytest.approx(20)
    assert power_law_fit([1, 2, 4], [100 - 20 * n ** -0.5 for n in (1, 2, 4)])["b"] > 0  # raw accuracy: b ≈ 0


def test_the_demo_bars_surface_reads_the_demo_budget_runs():
    """demo_hlr_bars (kind bars) adds no cells: it draws demo_hyperbolic_budget's runs."""
    from llqr.workflow.matrix import expand, load_workflow_config

    demo = expand(load_workflow_config(REPO / "config/config.yaml"))
    bars, budget = demo.surfaces["demo_hlr_bars"], demo.surfaces["demo_hyperbolic_budget"]
    assert bars.kind == "bars" and bars.group == "demo_extra"
    assert bars.cell_ids == budget.cell_ids and len(bars.cell_ids) == 5 * 4
