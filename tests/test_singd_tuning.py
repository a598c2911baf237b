"""Tuning without a budget axis (the SINGD study's random search): each position is its own study at
the surface's first seed, every seed's cell applies its best params; bad tune blocks are refused."""

import json

import pytest

from conftest import REPO, run_snakemake, slurm_free_env
from llqr.config import ConfigError
from llqr.workflow.matrix import expand, load_workflow_config
from llqr.workflow.plan import main as plan_main
from llqr.workflow.studies import parse_tune
from llqr.workflow.validator import check_workflow

AXES = {"optimizer": [{"label": "adamw", "set": {"optimizer": "adamw", "learning_rate": 2.0e-3}},
                      {"label": "ikfac", "set": {"optimizer": "ikfac", "learning_rate": 1.0e-2}}],
        "epochs": [{"label": "2", "set": {"total_epochs": 2}}, {"label": "3", "set": {"total_epochs": 3}}]}
LOG_RANGE = {"low": 1e-4, "high": 1e-2, "log": True}
TUNE = {"trials": 3, "sampler": "random", "metric": "test_error",
        "rules": [{"when": {"optimizer": "adamw"}, "space": {"learning_rate": LOG_RANGE}},
                  {"when": {"optimizer": "ikfac"}, "space": {"factor_damping": LOG_RANGE,
                                                            "lr_cov": {"low": 1e-3, "high": 5e-2, "log": True}}}]}


def _config(tune=TUNE, seeds=(3, 4)):
    return {"surfaces": {"t": {"presets": ["digits-mlp"], "seeds": list(seeds), "axes": AXES,
                               "rules": [{"set": {"use_preconditioner": False}}], "tune": tune}}}


def test_parse_tune_without_a_budget_axis_lets_rules_name_any_axis():
    axes = {"optimizer": [("adamw", {}), ("ikfac", {})], "epochs": [("2", {}), ("3", {})]}
    rules = [{"when": {"epochs": "2"}, "space": {"learning_rate": {"low": 1e-3, "high": 1e-2}}}]
    tune = parse_tune("t", {"trials": 2, "rules": rules}, axes, ["digits-mlp"], [7, 8])
    assert tune["budget_axis"] is None and tune["tuning_seed"] == 7 and tune["sampler"] == "tpe"
    with pytest.raises(ConfigError, match="cannot depend on the budget axis 'epochs'"):
        parse_tune("t", {"budget_axis": "epochs", "trials": 2, "rules": rules}, axes, ["digits-mlp"], [7])


def test_each_position_is_tuned_at_its_own_settings_and_every_seed_applies_it():
    m = expand(_config())
    assert len(m.studies) == 4  # 2 optimizers x 2 epoch counts: no axis is collapsed
    spaces = {"adamw": {"learning_rate"}, "ikfac": {"factor_damping", "lr_cov"}}
    for study in m.studies.values():
        assert study.sampler == "random" and study.to_dict()["sampler"] == "random" and study.trials == 3
        assert study.metric == "test_error" and study.mode == "min" and study.config["init_key"] == 3
        assert set(study.space) == spaces[study.config["optimizer"]]
        cells = [c for c in m.cells.values() if c.study == study.id]
        assert sorted(c.seed for c in cells) == [3, 4]  # both seeds apply the seed-3 study's best params
        for cell in cells:
            assert cell.id == f"{study.id}+tuned/seed{cell.seed}"
            assert {**cell.config, "init_key": 3} == study.config  # the study runs the cell's own config
    assert {s.config["total_epochs"] for s in m.studies.values()} == {2, 3}


def test_without_tune_the_same_positions_are_untuned_cells_with_the_same_diffs():
    tuned, plain = expand(_config()), expand({"surfaces": {"t": {**_config()["surfaces"]["t"], "tune": None}}})
    assert not plain.studies and all(c.study is None for c in plain.cells.values())
    assert sorted(c.replace("+tuned", "") for c in tuned.cells) == sorted(plain.cells)


@pytest.mark.parametrize("tune, message", [
    ({**TUNE, "budget_axis": "budget"}, "tune.budget_axis must name an axis or be left out"),
    ({key: v for key, v in TUNE.items() if key != "trials"}, "trials"),
    ({**TUNE, "sampler": "grid"}, "sampler"),
    ({**TUNE, "rules": [{"when": {"optimizer": "adamw"}, "space": {"lr": 1}}]}, "search space entry 'lr'"),
    ({**TUNE, "rules": [{"when": {"optimizer": "ikfac"}, "space": {"lr_cov": {"low": 0.0, "high": 1e-2}}}]},
     "lr_cov"),  # a corner the run would refuse (lr_cov > 0)
])
def test_bad_tune_blocks_are_refused_by_the_workflow_validator(tune, message):
    config = load_workflow_config(REPO / "config/config.yaml")
    config["surfaces"] = _config(tune)["surfaces"]
    with pytest.raises(ConfigError, match=message):
        check_workflow(config)  # what snakemake (rules/common.smk) and python -m llqr.plan run first


def test_the_plan_cli_refuses_a_bad_tune_block(tmp_path, capsys):
    extra = tmp_path / "bad.yaml"
    bad = {"surfaces": {name: None for name in load_workflow_config(REPO / "config/config.yaml")["surfaces"]}}
    bad["surfaces"]["bad_tune"] = {**_config({**TUNE, "budget_axis": "budget"})["surfaces"]["t"], "group": "demo"}
    extra.write_text(json.dumps(bad))
    assert plan_main(["demo", "--summary", "--configfile", str(extra)]) == 2
    assert "surface 'bad_tune': tune.budget_axis must name an axis" in capsys.readouterr().err


def test_the_singd_study_tunes_its_test_error_surfaces_per_optimizer_by_random_search():
    paper = load_workflow_config(REPO / "config/paper.yaml")
    surfaces = {n: s for n, s in paper["surfaces"].items() if n.startswith("singd_")}
    m = expand({"surfaces": surfaces})
    tuned = ("singd_cifar100", "singd_imagewoof", "singd_cora", "singd_imagenet100")
    for name, surface in m.surfaces.items():
        studies = {m.cells[e.cell_id].study for e in surface.entries}
        assert (None not in studies) if name in tuned else (studies == {None}), name
    positions = sum(len(m.surfaces[n].entries) // len(m.surfaces[n].seeds) for n in tuned)
    assert len(m.studies) == positions == 7 * 22 + 6 * 22 + 11 + 22  # one per (model, optimizer, precision)
    by_optimizer: dict = {}
    for study in m.studies.values():
        assert study.sampler == "random" and study.metric == "test_error"
        assert study.config["init_key"] == 42  # the surfaces' first seed
        c = study.config
        by_optimizer.setdefault((c["optimizer"], c.get("singd_structure")), set()).add(frozenset(study.space))
    spaces = {opt: next(iter(s)) for opt, s in by_optimizer.items()}
    assert all(len(s) == 1 for s in by_optimizer.values())  # one space per optimizer, whatever the model
    assert "factor_damping" not in spaces[("adamw", "dense")] and "lr_cov" not in spaces[("kfac", "dense")]
    assert {"learning_rate", "factor_damping", "lr_cov"} <= spaces[("singd", "diagonal")]
    # memory and speed measure the published defaults: untuned cells of their own, shared by the two
    assert m.surfaces["singd_memory"].cell_ids == m.surfaces["singd_speed"].cell_ids


def test_the_random_search_demo_has_one_study_per_optimizer_and_no_budget_axis():
    m = expand(load_workflow_config(REPO / "config/config.yaml"))
    surface = m.surfaces["demo_singd_tuned"]
    studies = {m.cells[c].study for c in surface.cell_ids}
    assert len(studies) == 3 and None not in studies and surface.budget_axis is None
    assert all(m.studies[s].sampler == "random" for s in studies)
    agreement = [m.cells[c].config for c in m.surfaces["demo_singd_kfac_ikfac"].cell_ids]
    assert {(c["optimizer"], c["measure_kfac_agreement"], c["precision"]) for c in agreement} == {
        ("ikfac", True, "fp32"), ("ikfac", True, "bf16")}


@pytest.mark.slow
@pytest.mark.workflow
def test_the_singd_demos_run_their_random_search_and_render(tmp_path):
    names = ("demo_singd_tuned", "demo_singd_kfac_ikfac")
    run_snakemake(["--cores", "2", *(f"results/surfaces/{n}/table.csv" for n in names)], tmp_path,
                  env=slurm_free_env(tmp_path), timeout=1800)
    bests = [json.loads(p.read_text()) for p in (tmp_path / "results" / "tuning").glob("digits-mlp/*/best.json")]
    assert len(bests) == 3 and all(b["sampler"] == "random" and len(b["trials"]) == 4 for b in bests)
    for best in bests:
        for seed in (42, 43):
            record = tmp_path / "results" / "cells" / f"{best['study']}+tuned" / f"seed{seed}" / "record.json"
            config = json.loads(record.read_text())["config"]
            assert all(config[key] == value for key, value in best["params"].items())
    for name in names:
        assert (tmp_path / "results" / "surfaces" / name / "figure.png").stat().st_size > 0
    rows = (tmp_path / "results" / "surfaces" / "demo_singd_kfac_ikfac" / "table.csv").read_text()
    assert "fp32" in rows and "bf16" in rows


@pytest.mark.slow
@pytest.mark.workflow
def test_snakemake_refuses_a_bad_tune_block_before_any_job(tmp_path):
    bad = {"surfaces": {"bad_tune": {**_config({**TUNE, "budget_axis": "budget"})["surfaces"]["t"],
                                     "group": "demo_extra"}}}
    extra = tmp_path / "bad.yaml"
    extra.write_text(json.dumps(bad))
    proc = run_snakemake(["-n", "--cores", "1", "demo_extra", "--configfile", str(extra)], tmp_path,
                         env=slurm_free_env(tmp_path), check=False, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "surface 'bad_tune': tune.budget_axis must name an axis" in out
    assert "rule train" not in out and "rule tune" not in out
