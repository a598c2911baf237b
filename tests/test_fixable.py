"""Failures that stay fixable, and small holes closed (issue 17, items 5 and 6)."""

import json
import os

import numpy as np
import pytest

from conftest import REPO, run_snakemake, write_yaml
from llqr.workflow.matrix import expand, load_workflow_config

DEFAULT_SURFACES = load_workflow_config(REPO / "config/config.yaml")["surfaces"]
ONE = {
    "surfaces": {
        **{name: None for name in DEFAULT_SURFACES},
        "one": {"group": "demo", "title": "One", "caption": "c", "metric": "test_accuracy",
                "presets": ["digits-mlp"], "seeds": [1, 2, 3], "axes": {}},
    }
}


def _write_cell(results, cid, summary):
    out = results / "cells" / cid
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").write_text("")
    (out / "record.json").write_text("{}")
    (out / "summary.json").write_text(summary if isinstance(summary, str) else json.dumps(summary))


def _ok(value=0.9):
    return {"status": "ok", "metric": "test_accuracy", "final": {"value": value, "step": 10},
            "best": {"value": value, "step": 10}}


# --- A1/A2: the aggregate lists failed cells and fails unless allow_missing ------------------
def _one_surface(tmp_path):
    config = {**load_workflow_config(REPO / "config/config.yaml"), **ONE}
    surface = expand(config).surfaces["one"]
    return surface.to_dict(), surface.cell_ids


def test_failed_cells_lists_failures_not_diverged_and_names_a_corrupt_summary(tmp_path):
    from llqr.report import failed_cells

    surface, (a, b, c) = _one_surface(tmp_path)
    _write_cell(tmp_path, a, {"status": "diverged", "diverged_at_step": 3})
    _write_cell(tmp_path, b, "{not json")
    _write_cell(tmp_path, c, {"metric": "test_accuracy", "final": {"value": 1.0, "step": 1}})  # no status
    lines = failed_cells(surface, tmp_path)
    assert len(lines) == 2 and not any(a in line for line in lines)
    assert f"{b}: failed: unreadable {tmp_path / 'cells' / b / 'summary.json'}" in lines[0]
    assert str(tmp_path / "cells" / c / "summary.json") in lines[1] and "no status" in lines[1]


@pytest.mark.workflow
def test_aggregate_fails_with_the_list_unless_allow_missing_true(tmp_path):
    surface, cells = _one_surface(tmp_path)
    data = tmp_path / "data" / "digits" / "digits.npz"
    data.parent.mkdir(parents=True)
    data.write_bytes(b"x")
    old = data.stat().st_mtime - 100  # older than the cells: nothing to retrain
    os.utime(data, (old, old))
    for cid in cells[:2]:
        _write_cell(tmp_path / "results", cid, _ok())
    _write_cell(tmp_path / "results", cells[2], {"status": "failed-data", "message": "gone"})
    write_yaml(tmp_path / "c.yaml", ONE)
    args = ["demo", "--cores", "1", "--configfile", str(tmp_path / "c.yaml")]
    proc = run_snakemake(args, tmp_path, check=False)
    assert proc.returncode != 0 and f"{cells[2]}: failed-data: gone" in proc.stderr
    assert "allow_missing=true" in proc.stderr and not (tmp_path / "results/surfaces/one/table.md").exists()
    proc = run_snakemake([*args, "--config", "allow_missing=true"], tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "failed-data" in (tmp_path / "results/surfaces/one/table.md").read_text()


# --- A3: data outside the workflow fails the job instead of recording failed-data -----------
def test_external_dataset_dir_data_error_fails_the_train_job(tmp_path):
    from llqr.config import resolve
    from llqr.workflow.train_job import train_from_workflow

    missing = tmp_path / "elsewhere"
    config = resolve("digits-mlp", {"dataset_dir": str(missing)}).to_dict()
    rc = train_from_workflow(json.dumps(config), "x/default/seed1", results_dir=tmp_path / "r",
                             checkpoints_dir=tmp_path / "c", data_root=tmp_path / "d", log_path=tmp_path / "log")
    assert rc != 0 and not (tmp_path / "r" / "cells" / "x/default/seed1" / "summary.json").exists()
    assert str(missing) in (tmp_path / "log").read_text()


# --- A4: every decoding error is a DataError naming the file; fetch names source and dest ----
def test_digits_zlib_corruption_is_a_data_error_naming_the_file(tmp_path):
    from llqr.data import digits
    from llqr.data.errors import DataError

    path = tmp_path / digits.FILENAME
    np.savez_compressed(path, **{k: np.arange(4000, dtype=np.int32) for k in digits.KEYS})
    raw = bytearray(path.read_bytes())
    raw[200:260] = b"\xff" * 60  # inside the first member's deflate stream
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="corrupt") as info:
        digits.load(tmp_path)
    assert str(path) in str(info.value)


def test_fetch_checksum_error_names_the_source_and_destination_not_a_temp_file(tmp_path):
    from llqr.data.errors import DataError
    from llqr.data.fetch import fetch

    local, dest = tmp_path / "copy.tar.gz", tmp_path / "raw" / "archive.tar.gz"
    local.write_bytes(b"abc")
    with pytest.raises(DataError) as info:
        fetch("https://example.invalid/a.tar.gz", dest, {"sha256": "0" * 64}, local=str(local))
    message = str(info.value)
    assert str(local) in message and str(dest) in message
    assert ".tmp" not in message and "tmp" not in message.replace(str(tmp_path), "")


# --- B1: resources.presets entries must name presets ------------------------------------------
def test_resources_for_an_unknown_preset_is_an_error_with_a_suggestion():
    from llqr.config import ConfigError

    config = {**load_workflow_config(REPO / "config/config.yaml"), "resources": {"presets": {"digits-mpl": {"gpu": 1}}}}
    match = r"resources.presets: unknown preset 'digits-mpl' \(did you mean 'digits-mlp'\?\)"
    with pytest.raises(ConfigError, match=match):
        expand(config)


# --- B2: preset names, surface names and --cell-id stay inside their folders ----------------
@pytest.mark.parametrize("name", ["../digits-mlp", "/etc/passwd", "_cifar", "a/../../b"])
def test_preset_names_cannot_escape_or_name_hidden_bases(name):
    from llqr.config import ConfigError, load_preset

    with pytest.raises(ConfigError, match="must be a plain relative name"):
        load_preset(name)


def test_surface_names_cannot_escape_the_surfaces_folder():
    from llqr.config import ConfigError

    config = load_workflow_config(REPO / "config/config.yaml")
    config["surfaces"] = {"..": ONE["surfaces"]["one"]}
    with pytest.raises(ConfigError, match="surface name '..' must be a plain relative name"):
        expand(config)


@pytest.mark.parametrize("cid", ["../../etc/x/seed1", "/tmp/x/seed1", "_x/default/seed1", "a//seed1"])
def test_cli_cell_id_cannot_escape_the_results_folder(cid, tmp_path, capsys):
    from llqr.workflow.train_cli import main

    rc = main(["preset=digits-mlp", "--cell-id", cid, "--results-dir", str(tmp_path)])
    assert rc == 2 and "--cell-id" in capsys.readouterr().err and not any(tmp_path.iterdir())


# --- B3: python -m llqr.plan checks the schema and prints one line ----------------------------
@pytest.mark.parametrize("text,expected", [("allow_missing: maybe\n", "error: allow_missing: "),
                                           ("surfacez: 1\n", "'surfacez' was unexpected"),
                                           ("resources: {presets: {nope-x: {gpu: 1}}}\n", "unknown preset 'nope-x'")])
def test_plan_applies_the_schema_and_reports_one_line(tmp_path, capsys, text, expected):
    from llqr.workflow.plan import main

    (tmp_path / "c.yaml").write_text(text)
    assert main(["--summary", "--configfile", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.startswith("error: ") and err.count("\n") == 1


def test_plan_accepts_allow_missing_true_as_passed_by_config(tmp_path):
    from llqr.workflow.jobparams import config_flag
    from llqr.workflow.plan import validate_schema

    config = {**load_workflow_config(REPO / "config/config.yaml"), "allow_missing": "true"}
    validate_schema(config)
    assert config_flag("true", "allow_missing") is True and config_flag(False, "allow_missing") is False


def test_a_schema_error_inside_a_surface_names_the_key_at_dry_run(tmp_path):
    config = write_yaml(tmp_path / "bad.yaml", {"surfaces": {"demo_llqr": {"metric": "accuracy"}}})
    proc = run_snakemake(["-n", "--configfile", str(config)], tmp_path, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "surfaces/demo_llqr/metric: 'accuracy' is not one of" in out, out
    assert "not valid under any of the given schemas" not in out


# --- B4: Ctrl-C checkpoints like SIGTERM ---------------------------------------------------------
def test_sigint_checkpoints_and_preempts_like_sigterm(tmp_path, digits_root):
    import signal

    from llqr.config import resolve
    from llqr.train.loop import PREEMPTED_EXIT_CODE, Preempted, run

    def out(line):
        if "step 10/" in line:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Preempted):
        run(resolve("digits-mlp-smoke", {"total_epochs": 4}), cell_id="t/default/seed1", results_dir=tmp_path / "r",
            checkpoints_dir=tmp_path / "c", data_root=digits_root, out=out)
    assert PREEMPTED_EXIT_CODE == 75 and list((tmp_path / "c").glob("t/default/seed1/*/orbax/1*"))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
