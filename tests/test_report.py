"""Aggregation of cell results into a surface's tables, figure and seed list (llqr.report)."""

from __future__ import annotations

import json
import math
import runpy
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from llqr.report import OUTPUTS, render_surface
from llqr.report.__main__ import main as cli_main
from llqr.report.collect import read_curve, read_summary
from llqr.report.formats import value_text

REPO = Path(__file__).resolve().parents[1]
PRESET = "digits-mlp"
SGD_CONST = [f"{PRESET}/opt=sgd/seed42", f"{PRESET}/opt=sgd/seed43"]  # seed43 never ran
SGD_COS = [f"{PRESET}/opt=sgd,sched=warm_cos/seed42", f"{PRESET}/opt=sgd,sched=warm_cos/seed43"]
ADAM_CONST = [f"{PRESET}/opt=adam_w/seed42", f"{PRESET}/opt=adam_w/seed43"]  # both diverge
# adam_w/warm_cos reuses sgd/warm_cos's seed-42 cell: one cell, two table positions.
ADAM_COS = [SGD_COS[0], f"{PRESET}/opt=adam_w,sched=warm_cos/seed43"]


def _surface(metric="test_accuracy", mode="max") -> dict:
    cells = {("sgd", "constant"): SGD_CONST, ("sgd", "warm_cos"): SGD_COS,
             ("adam_w", "constant"): ADAM_CONST, ("adam_w", "warm_cos"): ADAM_COS}  # fmt: skip
    entries = [
        {"cell": ids[i], "preset": PRESET, "labels": {"optimizer": opt, "schedule": sched}, "seed": seed}
        for (opt, sched), ids in cells.items()
        for i, seed in enumerate([42, 43])
    ]
    return {
        "name": "demo_optimizers",
        "title": "Optimizers on digits",
        "caption": "Test accuracy after training.",
        "metric": metric,
        "mode": mode,
        "axes": {"optimizer": ["sgd", "adam_w"], "schedule": ["constant", "warm_cos"]},
        "rows": ["preset", "optimizer"],
        "columns": ["schedule"],
        "seeds": [42, 43],
        "entries": entries,
    }


def _write_cell(results: Path, cell: str, status: str, final=None, best=None, diverged_at=None, evals=()):
    """A cell directory as the trainer leaves it: summary.json and metrics.jsonl."""
    d = results / "cells" / cell
    d.mkdir(parents=True)
    last = evals[-1][0] if evals else 0
    summary = {
        "cell": cell, "status": status, "metric": "test_accuracy", "mode": "max",
        "final": None if final is None else {"value": final, "step": 200},
        "best": None if best is None else {"value": best, "step": 150},
        "steps": 200 if status == "ok" else last, "total_steps": 200, "wall_time_s": 3.5,
        "diverged_at_step": diverged_at, "message": "loss is nan" if status == "diverged" else None,
    }  # fmt: skip
    (d / "summary.json").write_text(json.dumps(summary))
    lines = [{"event": "train", "step": step - 10, "elapsed_s": 0.1, "train_loss": 1.0 / step} for step, _ in evals]
    lines += [
        {"event": "eval", "step": step, "elapsed_s": 0.2, "test_accuracy": acc, "test_loss": 1 - acc / 100}
        for step, acc in evals
    ]
    if status == "ok":
        lines.append({"event": "final_eval", "step": 200, "elapsed_s": 0.3, "test_accuracy": final,
                      "test_loss": 1 - final / 100})  # fmt: skip
    (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


@pytest.fixture
def results(tmp_path) -> Path:
    root = tmp_path / "results"
    _write_cell(root, SGD_CONST[0], "ok", 90.0, 91.0, evals=[(100, 85.0), (200, 90.0)])
    _write_cell(root, SGD_COS[0], "ok", 92.0, 92.5, evals=[(100, 88.0), (200, 92.0)])
    _write_cell(root, SGD_COS[1], "ok", 93.0, 94.0, evals=[(100, 89.0), (200, 93.0)])
    _write_cell(root, ADAM_CONST[0], "diverged", diverged_at=150, evals=[(100, 40.0)])
    _write_cell(root, ADAM_CONST[1], "diverged", diverged_at=120, evals=[(100, 30.0)])
    _write_cell(root, ADAM_COS[1], "ok", 95.0, 95.5, evals=[(100, 91.0), (200, 95.0)])
    with open(root / "cells" / ADAM_COS[1] / "metrics.jsonl", "a") as f:
        f.write('{"event": "eval", "step": 2')  # a line cut off mid-write is skipped
    return root


@pytest.fixture
def rendered(results, tmp_path):
    out = tmp_path / "surfaces" / "demo_optimizers"
    return render_surface(_surface(), results, out), out


def test_writes_every_output_atomically(rendered):
    paths, out = rendered
    assert set(paths) == set(OUTPUTS) == {"csv", "md", "tex", "png", "pdf", "seeds"}
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS.values())  # no temp files left
    assert all(paths[k].stat().st_size > 0 for k in paths)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["pdf"].read_bytes()[:5] == b"%PDF-"


def test_table_csv_means_over_ok_seeds(rendered):
    paths, _ = rendered
    table = pd.read_csv(paths["csv"], dtype={"seeds": str})
    assert list(table.columns) == [
        "preset", "optimizer", "schedule", "metric", "final_mean", "final_std", "best_mean", "best_std",
        "n_ok", "n_seeds", "status", "seeds", "cells",
    ]  # fmt: skip
    rows = {(r.optimizer, r.schedule): r for r in table.itertuples()}
    assert list(rows) == [("sgd", "constant"), ("sgd", "warm_cos"), ("adam_w", "constant"), ("adam_w", "warm_cos")]
    assert set(table["metric"]) == {"test_accuracy"} and set(table["preset"]) == {PRESET}

    partial = rows["sgd", "constant"]  # one ok seed, one missing
    assert (partial.final_mean, partial.best_mean, partial.n_ok, partial.n_seeds) == (90.0, 91.0, 1, 2)
    assert math.isnan(partial.final_std) and partial.status == "partial"

    ok = rows["sgd", "warm_cos"]
    assert ok.final_mean == pytest.approx(92.5) and ok.final_std == pytest.approx(math.sqrt(0.5))
    assert ok.best_mean == pytest.approx(93.25) and ok.best_std == pytest.approx(math.sqrt(1.125))
    assert (ok.n_ok, ok.status, ok.seeds) == (2, "ok", "42;43")

    diverged = rows["adam_w", "constant"]
    assert (diverged.n_ok, diverged.status) == (0, "diverged") and math.isnan(diverged.final_mean)

    shared = rows["adam_w", "warm_cos"]  # seed 42 is sgd/warm_cos's cell
    assert shared.final_mean == pytest.approx(93.5) and shared.final_std == pytest.approx(math.sqrt(4.5))
    assert shared.best_mean == pytest.approx(94.0) and shared.best_std == pytest.approx(math.sqrt(4.5))
    assert shared.cells.split(";") == ADAM_COS


def test_markdown_pivot_and_footnote(rendered):
    md = rendered[0]["md"].read_text()
    assert md.startswith("# Optimizers on digits\n\nTest accuracy after training.\n")
    assert "| preset | optimizer | constant | warm_cos |" in md
    assert f"| {PRESET} | sgd | 90.00 (1/2) | 92.50 ± 0.71 |" in md
    assert f"| {PRESET} | adam_w | diverged | **93.50 ± 2.12** |" in md  # best of its column
    assert f"`{ADAM_CONST[0]}`: diverged at step 150" in md
    assert f"`{ADAM_CONST[1]}`: diverged at step 120" in md
    assert f"`{SGD_CONST[1]}`: missing\n" in md
    assert "(k/n)" in md and "2 seeds (42, 43)" in md


def test_latex_tabular_is_escaped(rendered):
    tex = rendered[0]["tex"].read_text()
    body = [line for line in tex.splitlines() if not line.startswith("%")]
    assert body[0] == r"\begin{tabular}{llrr}" and body[-1] == r"\end{tabular}"
    rules = [r"\toprule", r"\midrule", r"\bottomrule"]
    assert [line for line in body if line in rules] == rules
    assert r"preset & optimizer & constant & warm\_cos \\" in body
    assert r" & adam\_w & diverged & \textbf{93.50 $\pm$ 2.12} \\" in body  # repeated preset left blank
    assert not any("_" in line.replace(r"\_", "") for line in body)
    assert f"% not in the means: {ADAM_CONST[0]}: diverged at step 150" in tex


def test_seeds_json(rendered):
    seeds = json.loads(rendered[0]["seeds"].read_text())
    assert seeds["seeds"] == [42, 43]
    assert seeds["cells"][SGD_COS[0]] == 42 and seeds["cells"][ADAM_COS[1]] == 43
    assert len(seeds["cells"]) == 7  # eight cell ids in the surface, one shared


def test_all_missing_surface_still_renders(tmp_path):
    paths = render_surface(_surface(), tmp_path / "empty_results", tmp_path / "out")
    table = pd.read_csv(paths["csv"])
    assert set(table["status"]) == {"missing"} and (table["n_ok"] == 0).all()
    md = paths["md"].read_text()
    assert f"| {PRESET} | sgd | missing | missing |" in md and f"`{SGD_COS[0]}`: missing\n" in md
    assert paths["png"].stat().st_size > 0 and paths["pdf"].stat().st_size > 0


def test_surface_without_entries_renders(tmp_path):
    surface = {**_surface(), "entries": []}
    paths = render_surface(surface, tmp_path / "results", tmp_path / "out")
    assert pd.read_csv(paths["csv"]).empty
    assert paths["png"].stat().st_size > 0


def test_loss_metric_formats_and_reads_train_lines(results):
    assert read_curve(results, SGD_COS[0], "train_loss")["step"].tolist() == [90, 190]
    assert read_curve(results, ADAM_COS[1], "test_accuracy")["event"].tolist() == ["eval", "eval", "final_eval"]
    record = {"n_ok": 2, "n_seeds": 3, "final_mean": 0.123456, "final_std": 0.01, "status": "partial"}
    assert value_text(record, "test_loss") == "0.1235 ± 0.0100 (2/3)"
    assert value_text(record, "valid_bleu") == "0.12 ± 0.01 (2/3)"


def test_other_metric_is_read_from_metrics_jsonl(results, tmp_path):
    """summary.json tracks test_accuracy; a test_loss surface must report losses, lower = better."""
    paths = render_surface(_surface("test_loss", "min"), results, tmp_path / "loss")
    rows = {(r.optimizer, r.schedule): r for r in pd.read_csv(paths["csv"]).itertuples()}
    ok = rows["sgd", "warm_cos"]  # final losses 0.08, 0.07; best = lowest logged (the final ones here)
    assert ok.final_mean == pytest.approx(0.075) and ok.best_mean == pytest.approx(0.075)
    assert set(pd.read_csv(paths["csv"])["metric"]) == {"test_loss"}
    md = paths["md"].read_text()
    assert "| sgd | 0.1000 (1/2) | 0.0750 ± 0.0071 |" in md and "lower is better" in md
    assert "| adam_w | diverged | **0.0650 ± 0.0212** |" in md  # lowest loss is best


def test_summary_states(results):
    assert read_summary(results, "nope/default/seed1")["status"] == "missing"
    broken = results / "cells" / "broken/default/seed1"
    broken.mkdir(parents=True)
    assert read_summary(results, "broken/default/seed1")["message"] == "no summary.json yet"
    (broken / "summary.json").write_text("{not json")
    assert read_summary(results, "broken/default/seed1")["status"] == "failed"


def test_cli(results, tmp_path, capsys):
    surface_json = tmp_path / "surface.json"
    surface_json.write_text(json.dumps(_surface()))
    out = tmp_path / "cli_out"
    assert cli_main(["--surface-json", str(surface_json), "--results-dir", str(results), "--out-dir", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS.values())
    assert "table.md" in capsys.readouterr().out


def test_workflow_script(results, tmp_path, monkeypatch):
    out = tmp_path / "surfaces" / "demo_optimizers"

    def script(allow_missing):
        fake = SimpleNamespace(
            scriptdir=str(REPO / "workflow_scripts"),
            params=SimpleNamespace(surface=json.dumps(_surface()), results_dir=str(results),
                                   allow_missing=allow_missing),
            output=SimpleNamespace(**{name: str(out / filename) for name, filename in OUTPUTS.items()}),
        )
        runpy.run_path(str(REPO / "workflow_scripts" / "aggregate_surface.py"), init_globals={"snakemake": fake})

    monkeypatch.setattr(sys, "path", list(sys.path))  # the script prepends the repo root
    with pytest.raises(SystemExit, match=r"1 cell\(s\) failed or missing:\n  digits-mlp/opt=sgd/seed43: missing"):
        script(allow_missing=False)  # the fixture lacks one cell
    assert not out.exists()
    script(allow_missing=True)
    assert all((out / filename).is_file() for filename in OUTPUTS.values())


def test_sweep_points_and_log_axes():
    """kind sweep: per position the mean/min/max of the ok seeds' final values at x = the axis label,
    sorted by x; noise statistics on a log y axis, every panel on a log2 x axis."""
    from llqr.report.sweep import sweep_figure, sweep_points

    rows = [("p", "512", 42, "ok", 1.0), ("p", "512", 43, "ok", 3.0), ("p", "8", 42, "ok", 40.0),
            ("p", "8", 43, "diverged", None), ("q", "8", 42, "failed", None)]
    entries = pd.DataFrame([{"preset": p, "batch": b, "seed": s, "cell": f"{p}/{b}/{s}", "status": st, "final": f,
                             "best": f, "final_step": 1, "best_step": 1, "diverged_at_step": None, "message": ""}
                            for p, b, s, st, f in rows])
    points = sweep_points(entries, "batch")
    assert list(points["x"]) == [8.0, 512.0] and list(points["preset"]) == ["p", "p"]
    assert list(points["mean"]) == [40.0, 2.0] and list(points["min"]) == [40.0, 1.0]
    surface = {"title": "t", "sweep_axis": "batch", "axes": {"batch": ["8", "512"]},
               "entries": [{"preset": p} for p in ("p", "q")]}
    fig = sweep_figure(surface, {"test_accuracy": entries, "noise_ratio": entries})
    acc, noise = fig.axes[:2]
    assert acc.get_xscale() == noise.get_xscale() == "log"
    assert acc.get_yscale() == "linear" and noise.get_yscale() == "log"
    assert [t.get_text() for t in acc.get_legend().get_texts()] == ["p (1/4 diverged)", "q (failed) (no data)"]
