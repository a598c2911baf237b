"""Failures that stay fixable, and small holes closed (issue 17, items 5 and 6)."""

import json
import os
import zlib

import numpy as np
import pytest

from conftest import REPO, run_snakemake, write_yaml
from llqr.matrix import expand, load_workflow_config

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
    from llqr.train.cell import train_from_workflow

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
    assert str(local) in message and str(dest) in message and ".tmp" not in message and "tmp" not in message.replace(str(tmp_path), "")
