"""Re-runs retrain, checkpoints are verified, one writer per cell (the runner side)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from llqr.config import resolve
from llqr.data import digits
from llqr.train.loop import run


def _run(tmp_path, data_root, cell="t/default/seed42", **overrides):
    cfg = resolve("digits-mlp-smoke", overrides)
    lines = []
    summary = run(cfg, cell_id=cell, results_dir=tmp_path / "results", checkpoints_dir=tmp_path / "ckpt",
                  data_root=data_root, out=lines.append)
    return summary, lines


def _resumed(lines):
    return [line for line in lines if "resuming from checkpoint" in line]


@pytest.fixture
def own_data(tmp_path, digits_root):
    """A private copy of the digits data that a test may poison."""
    root = tmp_path / "data"
    shutil.copytree(digits_root, root)
    return root


# --- 1. a re-run retrains ------------------------------------------------------------------------

def test_rerun_of_a_finished_cell_trains_from_step_0_and_keeps_the_previous_result(tmp_path, digits_root):
    first, _ = _run(tmp_path, digits_root)
    again, lines = _run(tmp_path, digits_root)
    assert not _resumed(lines), lines
    assert again["final"] == first["final"]  # same config, same data: the same result, trained again
    cell_root = tmp_path / "ckpt" / "t/default/seed42"
    assert [p.name for p in cell_root.iterdir() if not p.name.startswith(".")] == ["previous"]
    record = json.loads((tmp_path / "results/cells/t/default/seed42/record.json").read_text())
    assert record["checkpoint_path"] == str(cell_root / "previous" / "orbax")
    assert record["inputs"]["files"]["digits.npz"] and len(record["inputs"]["sha256"]) == 64


def test_nan_data_after_a_finished_run_makes_the_rerun_diverge(tmp_path, own_data):
    assert _run(tmp_path, own_data)[0]["status"] == "ok"
    path = own_data / "digits" / digits.FILENAME
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["x_train"] = np.full(arrays["x_train"].shape, np.nan, np.float32)
    np.savez(path, **arrays)
    summary, lines = _run(tmp_path, own_data)
    assert not _resumed(lines), lines
    assert summary["status"] == "diverged" and summary["diverged_at_step"] == 0


def test_the_input_fingerprint_follows_the_bytes_not_the_path(tmp_path, own_data):
    """Changed data gives another checkpoint key; files are named by base name, so moving
    data_dir does not."""
    from llqr.train.fingerprint import fingerprint

    before = fingerprint([own_data / "digits" / digits.FILENAME])
    path = own_data / "digits" / digits.FILENAME
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["y_train"] = arrays["y_train"][::-1].copy()
    np.savez(path, **arrays)
    after = fingerprint([path])
    assert before["sha256"] != after["sha256"] and list(after["files"]) == ["digits.npz"]
    moved = tmp_path / "elsewhere" / digits.FILENAME
    moved.parent.mkdir()
    shutil.copy(path, moved)
    assert fingerprint([moved]) == after
