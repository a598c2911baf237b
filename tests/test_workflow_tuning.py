"""The tuning chain through the Snakemake CLI: tune rule -> best.json -> tuned cells at every budget ->
budget/slcd/curves surfaces; editing one study's search space re-runs that study and its cells only."""

import csv
import json
import shutil

import pytest
import yaml

from conftest import REPO, run_snakemake, write_yaml
from test_workflow import DEFAULT_SURFACES, _job_counts, _train_cells

pytestmark = pytest.mark.workflow

AXES = {
    "schedule": [{"label": "H", "set": {"lr_scheduler": {"name": "hyperbolic", "upper_bound": 3}}},
                 {"label": "C", "set": {"lr_scheduler": "cosine"}}],
    "budget": [{"label": "1", "set": {"total_epochs": 1}}, {"label": "2", "set": {"total_epochs": 2}}],
}
TUNE = {"budget_axis": "budget", "trials": 2, "seed": 42, "metric": "test_loss",
        "space": {"learning_rate": {"low": 1.0e-3, "high": 3.0e-2, "log": True}},
        "rules": [{"when": {"schedule": "H"}, "space": {"lr_scheduler.upper_bound": {"choices": [3, 4]}}}]}
COMMON = {"presets": ["tiny-budget"], "seeds": [1], "metric": "test_loss", "axes": AXES, "tune": TUNE,
          "table": {"rows": ["preset", "schedule"], "columns": ["budget"]}}
CONFIG = {"surfaces": {
    **{name: None for name in DEFAULT_SURFACES},
    "hb": {**COMMON, "title": "budget", "kind": "budget", "budget_axis": "budget"},
    "hs": {**COMMON, "title": "slcd", "kind": "slcd", "budget_axis": "budget", "x": "epoch"},
    "hc": {**COMMON, "title": "curves", "x": "epoch", "panels": "schedule"},
}}


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("wf-tune")
    presets = root / "presets"
    shutil.copytree(REPO / "config" / "presets", presets)
    write_yaml(presets / "tiny-budget.yaml", {"inherits": "digits-mlp-budget", "mlp_hidden": [16]})
    env = {"LLQR_PRESETS_DIR": str(presets)}
    config = write_yaml(root / "tune.yaml", CONFIG)
    work = root / "work"
    work.mkdir()
    proc = run_snakemake(["--cores", "2", "--configfile", str(config)], work, env=env)
    return {"root": root, "work": work, "env": env, "config": config, "log": proc.stdout + proc.stderr}


def _studies(work):
    return {p.parent.relative_to(work / "results" / "tuning").as_posix(): json.loads(p.read_text())
            for p in (work / "results" / "tuning").glob("*/*/best.json")}


def test_each_study_ran_its_trials_and_feeds_its_cells(tuned_run):
    work = tuned_run["work"]
    studies = _studies(work)
    assert len(studies) == 2
    for sid, best in studies.items():
        assert len(best["trials"]) == 2 and best["study"] == sid
        assert (work / "results" / "tuning" / sid / "optuna.db").is_file()
    h = next(b for s, b in studies.items() if "hyperbolic" in s)
    assert set(h["params"]) == {"learning_rate", "lr_scheduler.upper_bound"}
    records = list((work / "results" / "cells").glob("tiny-budget/*hyperbolic*+tuned/seed1/record.json"))
    assert len(records) == 2  # budgets 1 and 2
    for path in records:
        config = json.loads(path.read_text())["config"]
        assert config["learning_rate"] == h["params"]["learning_rate"]
        assert config["lr_scheduler"]["upper_bound"] == h["params"]["lr_scheduler.upper_bound"]


def test_budget_slcd_and_curve_surfaces_render(tuned_run):
    out = tuned_run["work"] / "results" / "surfaces"
    for name in ("hb", "hs", "hc"):
        for f in ("table.csv", "table.md", "table.tex", "figure.png", "figure.pdf"):
            assert (out / name / f).stat().st_size > 0, (name, f)
    budget = list(csv.DictReader((out / "hb" / "table.csv").open()))
    assert {r["schedule"] for r in budget} == {"H", "C"} and all(r["fit_b"] for r in budget)
    assert "Power-law fit" in (out / "hb" / "table.md").read_text()
    pairs = list(csv.DictReader((out / "hs" / "table.csv").open()))
    assert [(r["budget_a"], r["budget_b"]) for r in pairs] == [("1", "2"), ("1", "2")]
    assert all(0 <= float(r["slcd"]) < 1 for r in pairs)


def test_nothing_to_do_after_a_tuned_run(tuned_run):
    proc = run_snakemake(["-n", "--cores", "1", "--configfile", str(tuned_run["config"])], tuned_run["work"],
                         env=tuned_run["env"])
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_editing_one_search_space_reruns_that_study_and_its_cells_only(tuned_run):
    changed = yaml.safe_load(tuned_run["config"].read_text())
    for name in ("hb", "hs", "hc"):
        changed["surfaces"][name]["tune"]["rules"][0]["space"]["lr_scheduler.upper_bound"] = {"choices": [3, 5]}
    config = write_yaml(tuned_run["root"] / "tune-changed.yaml", changed)
    proc = run_snakemake(["-n", "--cores", "1", "--configfile", str(config)], tuned_run["work"], env=tuned_run["env"])
    counts = _job_counts(proc.stdout)
    assert counts.get("tune") == 1 and "wildcards: study=tiny-budget/epochs=1.0__lr_sched=hyperbolic" in proc.stdout
    # the tuned H cells re-run once the study rewrites best.json; the C study and cells are untouched
    assert _train_cells(proc.stdout) == {f"tiny-budget/epochs={b}__lr_sched=hyperbolic:upper_bound=3.0+tuned/seed1"
                                         for b in ("1.0", "2.0")}
    assert counts.get("aggregate") == 3
