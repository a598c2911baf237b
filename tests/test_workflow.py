"""The workflow end to end through the Snakemake CLI: demo-shaped run, report, staleness, paper dry-run."""

import csv
import re

import pytest
import yaml

from conftest import REPO, run_snakemake, write_yaml
from llqr.workflow.matrix import expand, load_workflow_config

pytestmark = pytest.mark.workflow

DEFAULT_SURFACES = load_workflow_config(REPO / "config/config.yaml")["surfaces"]
TINY = {
    "surfaces": {
        **{name: None for name in DEFAULT_SURFACES},  # switch the default demo off; use this small surface
        "tiny": {
            "group": "demo",
            "title": "Tiny digits surface",
            "caption": "two presets x two optimizer settings, two seeds",
            "metric": "test_accuracy",
            "presets": ["tiny-a", "tiny-b"],
            "seeds": [1, 2],
            "axes": {
                "opt": [
                    {"label": "sgd", "set": {"optimizer": "sgd"}},
                    {"label": "absurd", "set": {"optimizer": "sgd", "learning_rate": 1.0e30}},
                ]
            },
        },
    }
}


def _train_cells(dry_run_stdout: str) -> set:
    """Cells of the train jobs a dry-run lists."""
    cells, in_train = set(), False
    for line in dry_run_stdout.splitlines():
        if re.match(r"^(local)?rule \w+:", line.strip()):
            in_train = line.strip().startswith("rule train:")
        m = re.match(r"\s*wildcards: cell=(\S+)", line)
        if m and in_train:
            cells.add(m.group(1))
    return cells


def _job_counts(stdout: str) -> dict:
    block = stdout.split("Job stats:")[-1].splitlines()
    counts = {}
    for line in block[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One full run of a small demo-shaped workflow, shared by the tests below."""
    import shutil

    root = tmp_path_factory.mktemp("wf")
    presets = root / "presets"
    shutil.copytree(REPO / "config" / "presets", presets)
    for name in ("tiny-a", "tiny-b"):
        write_yaml(presets / f"{name}.yaml", {"inherits": "digits-mlp-smoke", "max_steps": 24, "mlp_hidden": [16]})
    env = {"LLQR_PRESETS_DIR": str(presets)}
    config = write_yaml(root / "tiny.yaml", TINY)
    work = root / "work"
    work.mkdir()
    proc = run_snakemake(["--cores", "2", "--configfile", str(config)], work, env=env)
    return {"root": root, "work": work, "env": env, "config": config, "presets": presets,
            "log": proc.stdout + proc.stderr}


def test_outputs_and_tables(tiny_run):
    out = tiny_run["work"] / "results" / "surfaces" / "tiny"
    for name in ("table.csv", "table.md", "table.tex", "figure.png", "figure.pdf", "seeds.json"):
        assert (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert {(r["preset"], r["opt"]) for r in rows} == {(p, o) for p in ("tiny-a", "tiny-b")
                                                      for o in ("sgd", "absurd")}
    for r in rows:
        if r["opt"] == "absurd":
            assert r["status"] == "diverged" and r["n_ok"] == "0"
        else:
            assert r["status"] == "ok" and r["n_ok"] == "2" and 0 < float(r["final_mean"]) <= 100
    md = (out / "table.md").read_text()
    assert "diverged" in md and "tiny-a/lr=1e+30/seed1" in md


def test_report_builds(tiny_run):
    report = tiny_run["root"] / "report.html"
    run_snakemake(["--cores", "1", "--configfile", str(tiny_run["config"]), "--report", str(report)],
                  tiny_run["work"], env=tiny_run["env"])
    html = report.read_text(errors="replace")
    assert report.stat().st_size > 10_000 and "tiny" in html


def test_nothing_to_do_when_nothing_changed(tiny_run):
    proc = run_snakemake(["-n", "--cores", "1", "--configfile", str(tiny_run["config"])], tiny_run["work"],
                         env=tiny_run["env"])
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_editing_one_preset_value_reruns_exactly_the_cells_using_it(tiny_run):
    preset = tiny_run["presets"] / "tiny-a.yaml"
    original = preset.read_text()
    try:
        preset.write_text(yaml.safe_dump({**yaml.safe_load(original), "learning_rate": 0.2}))
        proc = run_snakemake(["-n", "--cores", "1", "--configfile", str(tiny_run["config"])], tiny_run["work"],
                             env=tiny_run["env"])
        # absurd sets its own learning rate; only the sgd cells of tiny-a read the preset's
        assert _train_cells(proc.stdout) == {"tiny-a/default/seed1", "tiny-a/default/seed2"}
        assert _job_counts(proc.stdout).get("aggregate") == 1
    finally:
        preset.write_text(original)


def test_paper_dry_run_lists_every_cell_and_data_job(tmp_path):
    proc = run_snakemake(["-n", "paper", "--cores", "1", "--configfile", str(REPO / "config" / "paper.yaml")], tmp_path)
    matrix = expand(load_workflow_config(REPO / "config/config.yaml", REPO / "config/paper.yaml"))
    paper_cells = {c for name in matrix.group("paper") for c in matrix.surfaces[name].cell_ids}
    assert _train_cells(proc.stdout) == paper_cells and len(paper_cells) == 283
    counts = _job_counts(proc.stdout)
    assert counts["train"] == 283 and counts["aggregate"] == 7
    assert counts["fetch_raw"] == 3 and counts["index_imagenet"] == 1  # CIFAR-10/100, IWSLT archive; ImageNet index
    # IWSLT14 preparation chain (rules/iwslt.smk): tokenization once per language, the other steps once
    assert {r: counts.get(r) for r in ("iwslt_extract", "iwslt_tokenize", "iwslt_clean", "iwslt_split", "iwslt_bpe",
                                       "iwslt_pack")} == {"iwslt_extract": 1, "iwslt_tokenize": 2, "iwslt_clean": 1,
                                                          "iwslt_split": 1, "iwslt_bpe": 1, "iwslt_pack": 1}
