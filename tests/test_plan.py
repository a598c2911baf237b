"""The cost preview (python -m llqr.plan): every surface priced, totals that add up, no data needed."""

import json
import math
import subprocess
import sys

import pytest

from conftest import REPO
from llqr.config import resolve
from llqr.workflow.cost import StepTime, load_step_times, train_steps
from llqr.workflow.matrix import load_workflow_config
from llqr.workflow.plan import main, plan
from llqr.workflow.surface_spec import STUDY_GROUPS


@pytest.fixture(scope="module")
def paper_plan():
    config = load_workflow_config(REPO / "config/config.yaml", REPO / "config/paper.yaml")
    return config, plan(config, ["paper", "studies"], load_step_times())


def test_every_surface_of_the_targets_is_priced(paper_plan):
    config, result = paper_plan
    wanted = [n for n, s in config["surfaces"].items() if s and s.get("group") in ("paper", *STUDY_GROUPS)]
    assert [s["surface"] for s in result["surfaces"]] == wanted
    assert all(s["unpriced"] == 0 and s["gpu_hours"] > 0 for s in result["surfaces"] if s["cells"])
    # only the schedule-only surfaces have no cells to price
    assert {s["surface"] for s in result["surfaces"] if not s["cells"]} == {
        n for n in wanted if config["surfaces"][n].get("kind") == "schedules"} == {"hlr_schedules"}
    assert result["total"]["unpriced"] == 0 and len(result["studies"]) == 584


def test_totals_are_the_sums_of_the_rows(paper_plan):
    _, result = paper_plan
    cells = result["cells"]
    for s in result["surfaces"]:
        assert s["cells"] == len(s["cell_ids"])
        assert s["gpu_hours"] == pytest.approx(sum(cells[c]["gpu_hours"] for c in s["cell_ids"]))
        assert s["steps"] == sum(cells[c]["steps"] for c in s["cell_ids"])
    everything = list(cells.values()) + list(result["studies"].values())
    assert result["total"]["gpu_hours"] == pytest.approx(sum(r["gpu_hours"] for r in everything))
    assert result["total"]["cells"] == len(cells)  # a cell shared by surfaces counts once
    assert sum(s["cells"] for s in result["surfaces"]) > len(cells)
    study = next(iter(result["studies"].values()))
    assert study["steps"] % study["trials"] == 0


def test_resources_are_the_rules_resources(paper_plan):
    _, result = paper_plan
    imagenet = [r for r in result["cells"].values() if r["preset"] == "resnet50-imagenet"]
    assert imagenet and all(r["gpus"] == 4 and r["runtime_min"] == 4320 and r["mem_mb"] == 256000 for r in imagenet)


def test_steps_follow_the_runners_accounting():
    from llqr.train.accounting import step_accounting

    for preset, over in [("digits-mlp", {}), ("resnet18-cifar10", {}), ("digits-mlp", {"grad_acc_steps": 2}),
                         ("cnn-cifar10-hlr", {"total_epochs": 50}), ("digits-mlp", {"max_steps": 7})]:
        cfg = resolve(preset, over)
        size = {"digits": 1438, "cifar10": 50000}[cfg.dataset] * cfg.train_fraction
        _, total = step_accounting(cfg, round(size) / cfg.batch_size)
        assert train_steps(cfg.to_dict()) == total - 1  # the runner's total includes the final-eval sentinel
    svag = resolve("digits-mlp", {"noise": "svag", "svag_l": 4}).to_dict()
    assert train_steps(svag) == 4 * train_steps(resolve("digits-mlp", {}).to_dict())


def test_the_cli_previews_the_paper_matrix_without_any_data(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "llqr.plan", "paper", "studies", "--configfile",
                           str(REPO / "config/paper.yaml"), "--json", str(tmp_path / "plan.json")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "llqr_sam_imagenet (paper):" in proc.stdout and "hlr_cifar10_vit_slcd (hlr_study):" in proc.stdout
    assert "TOTAL paper, studies: 8019 cells + 584 tuning studies" in proc.stdout
    assert "resnet50-imagenet/llqr=off/seed42" in proc.stdout
    data = json.loads((tmp_path / "plan.json").read_text())
    assert math.isfinite(data["total"]["gpu_hours"]) and not (tmp_path / "data").exists()


def test_unknown_targets_are_named(capsys):
    with pytest.raises(SystemExit, match="'nope' is neither a group"):
        main(["nope"])


def test_calibrate_stores_a_measured_step_time(tmp_path):
    cell = tmp_path / "cells" / "digits-mlp" / "default" / "seed42"
    cell.mkdir(parents=True)
    (cell / "metrics.jsonl").write_text(json.dumps({"event": "final_eval", "step": 224, "ms_per_step": 2.5}) + "\n")
    (cell / "record.json").write_text(json.dumps({"cell": "digits-mlp/default/seed42",
                                                  "config": {"preset": "digits-mlp"},
                                                  "accelerator": {"platform": "cpu"}}))
    table = tmp_path / "step_times.yaml"
    assert main(["calibrate", str(cell), "--write", "--step-times", str(table)]) == 0
    entry = load_step_times(table)["digits-mlp"]
    assert entry == StepTime(0.0025, "measured: digits-mlp/default/seed42 on cpu")
