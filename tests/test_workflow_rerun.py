"""Through Snakemake: storage paths and bookkeeping keys are not identity; --forcerun retrains."""

import shutil

import pytest

from conftest import REPO, run_snakemake, write_yaml
from llqr.workflow.matrix import load_workflow_config

pytestmark = pytest.mark.workflow

DEFAULT_SURFACES = load_workflow_config(REPO / "config/config.yaml")["surfaces"]
CELL = "tiny-a/default/seed1"
ONE = {"surfaces": {**{name: None for name in DEFAULT_SURFACES},
                    "one": {"group": "demo", "metric": "test_accuracy", "presets": ["tiny-a"], "seeds": [1],
                            "axes": {"opt": [{"label": "sgd", "set": {"optimizer": "sgd"}}]}}}}


@pytest.fixture(scope="module")
def one_cell(tmp_path_factory):
    root = tmp_path_factory.mktemp("wf-rerun")
    presets = root / "presets"
    shutil.copytree(REPO / "config" / "presets", presets)
    write_yaml(presets / "tiny-a.yaml", {"inherits": "digits-mlp-smoke", "max_steps": 24, "mlp_hidden": [16]})
    work = root / "work"
    work.mkdir()
    ctx = {"work": work, "presets": presets, "env": {"LLQR_PRESETS_DIR": str(presets)},
           "config": write_yaml(root / "one.yaml", ONE)}
    run_snakemake(["--cores", "1", "--configfile", str(ctx["config"])], work, env=ctx["env"])
    return ctx


def _snakemake(ctx, *args, check=True):
    proc = run_snakemake(["--cores", "1", "--configfile", str(ctx["config"]), *args], ctx["work"], env=ctx["env"],
                         check=check)
    return proc.stdout + proc.stderr


def test_moving_checkpoints_dir_and_respelling_data_dir_leave_nothing_to_do(one_cell):
    scratch = one_cell["work"].parent / "scratch"
    out = _snakemake(one_cell, "-n", "--config", f"checkpoints_dir={scratch}", "data_dir=./data/")
    assert "Nothing to be done" in out, out


def test_bookkeeping_keys_leave_nothing_to_do(one_cell):
    preset = one_cell["presets"] / "tiny-a.yaml"
    original = preset.read_text()
    try:
        preset.write_text(original + "checkpoint_freq: 7\nkeep_checkpoints: 5\nreport_freq: 3\n")
        assert "Nothing to be done" in _snakemake(one_cell, "-n")
    finally:
        preset.write_text(original)


def test_forcerun_of_a_finished_cell_retrains_from_step_0_in_the_moved_checkpoints_dir(one_cell):
    work = one_cell["work"]
    scratch = work.parent / "scratch2"
    shutil.move(work / "checkpoints", scratch)
    _snakemake(one_cell, "--config", f"checkpoints_dir={scratch}", "--forcerun", f"results/cells/{CELL}/summary.json")
    log = (work / "logs" / "train" / f"{CELL}.log").read_text()
    assert "resuming from checkpoint" not in log and "done:" in log, log
    assert (scratch / CELL / "previous" / "orbax").is_dir()
    assert "Nothing to be done" in _snakemake(one_cell, "-n", "--config", f"checkpoints_dir={scratch}")
