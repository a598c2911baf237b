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


# --- 2. verified checkpoints ---------------------------------------------------------------------

LONG = {"total_epochs": 4, "keep_checkpoints": 3}  # checkpoints at 10, 20, 30 (freq 10), 88 updates


def _comparable(results: Path, cell="t/default/seed42"):
    out = results / "cells" / cell
    summary = json.loads((out / "summary.json").read_text())
    events = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    for e in events:
        e.pop("elapsed_s"), e.pop("ms_per_step", None)
    return summary["final"], summary["best"], events


def _preempted_at_31(tmp_path, data_root):
    """Run until the step-30 report, SIGTERM ourselves: checkpoints 20, 30 and 31 are left."""
    import os
    import signal

    from llqr.train.loop import Preempted

    def out(line):
        if "step 30/" in line:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Preempted):
        run(resolve("digits-mlp-smoke", LONG), cell_id="t/default/seed42", results_dir=tmp_path / "results",
            checkpoints_dir=tmp_path / "ckpt", data_root=data_root, out=out)
    orbax = next((tmp_path / "ckpt").glob("t/default/seed42/*/orbax"))
    assert sorted(int(p.name) for p in orbax.iterdir() if p.name.isdigit()) == [20, 30, 31]
    return orbax


def _largest_file(folder: Path) -> Path:
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, digits_root):
    root = tmp_path_factory.mktemp("ref")
    _run(root, digits_root, **LONG)
    return _comparable(root / "results")


def _flip_bit(step_dir: Path):
    target = _largest_file(step_dir / "state")
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x10
    target.write_bytes(bytes(data))


def _truncate(step_dir: Path):
    target = _largest_file(step_dir / "state")
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])


@pytest.mark.parametrize("damage", [_flip_bit, _truncate], ids=["flipped-bit", "unreadable"])
def test_a_damaged_latest_checkpoint_resumes_from_the_older_one_with_identical_results(
        tmp_path, digits_root, uninterrupted, damage):
    orbax = _preempted_at_31(tmp_path, digits_root)
    damage(orbax / "31")
    summary, lines = _run(tmp_path, digits_root, **LONG)
    moved = [line for line in lines if "checkpoint step 31" in line]
    assert len(moved) == 1 and "moved to" in moved[0] and "quarantine/step-31-" in moved[0], lines
    assert _resumed(lines) and "at step 30/" in _resumed(lines)[0]
    assert summary["status"] == "ok"
    assert _comparable(tmp_path / "results") == uninterrupted


def test_a_truncated_metrics_log_resumes_from_the_step_it_still_matches(tmp_path, digits_root, uninterrupted):
    orbax = _preempted_at_31(tmp_path, digits_root)
    log = orbax.parent / "metrics.jsonl"
    log.write_bytes(log.read_bytes()[:-1])
    summary, lines = _run(tmp_path, digits_root, **LONG)
    assert any("checkpoint step 31 does not match the live metrics log" in line for line in lines), lines
    assert "at step 30/" in _resumed(lines)[0]
    assert _comparable(tmp_path / "results") == uninterrupted


def test_a_kill_during_the_only_save_starts_the_run_again(tmp_path, digits_root, uninterrupted):
    orbax = _preempted_at_31(tmp_path, digits_root)
    for step in (20, 30, 31):  # as if killed before each save wrote its digest (the last file)
        (orbax / str(step) / "llqr_digest.json").unlink()
    summary, lines = _run(tmp_path, digits_root, **LONG)
    assert sum("has no llqr_digest.json" in line for line in lines) == 3 and not _resumed(lines)
    assert summary["status"] == "ok" and _comparable(tmp_path / "results") == uninterrupted


def test_no_intact_checkpoint_left_fails_naming_what_to_delete(tmp_path, digits_root):
    from llqr.train.checkpoint import NoIntactCheckpoint

    orbax = _preempted_at_31(tmp_path, digits_root)
    for step in (20, 30, 31):
        (orbax / str(step) / "llqr_digest.json").write_text('{"sha256": "0"}')
    with pytest.raises(NoIntactCheckpoint, match=f"delete {orbax.parent}"):
        _run(tmp_path, digits_root, **LONG)
    assert sorted(p.name for p in (orbax.parent / "quarantine").iterdir()) == [
        "step-20-digest-mismatch", "step-30-digest-mismatch", "step-31-digest-mismatch"]
    with pytest.raises(NoIntactCheckpoint):  # a retry fails the same way until the folder is deleted
        _run(tmp_path, digits_root, **LONG)


# --- 3. bookkeeping keys and storage paths are not identity --------------------------------------

def test_bookkeeping_keys_stay_out_of_the_cell_id_and_params_but_reach_the_job():
    import pickle

    from llqr.workflow.jobparams import JobParams
    from llqr.workflow.matrix import expand

    def cell(extra):
        spec = {"presets": ["digits-mlp-smoke"], "seeds": [1], "rules": [{"set": extra}] if extra else []}
        return next(iter(expand({"surfaces": {"s": spec}}).cells.values()))

    plain, busy = cell({}), cell({"checkpoint_freq": 7, "keep_checkpoints": 5, "preempt_handling": False})
    assert busy.id == plain.id and busy.config_json == plain.config_json and "checkpoint_freq" not in busy.config_json
    assert busy.settings == {"checkpoint_freq": 7, "keep_checkpoints": 5, "report_freq": 10, "preempt_handling": False}
    job = JobParams.of("./results/", "ckpt", "data", busy.settings)
    assert pickle.loads(pickle.dumps(job)) == {"results_dir": "results", "checkpoints_dir": "ckpt", "data_dir": "data",
                                               "settings": busy.settings}


def test_cli_keeps_the_bookkeeping_values_it_was_given_out_of_the_cell_id():
    from llqr.workflow.train_cli import resolve_cell

    cfg, cid = resolve_cell(["preset=digits-mlp-smoke", "checkpoint_freq=3"])
    assert cfg.checkpoint_freq == 3 and cid == resolve_cell(["preset=digits-mlp-smoke"])[1]


# --- 4. one writer per cell -----------------------------------------------------------------------

def _lock_path(tmp_path, cell="t/default/seed42"):
    return tmp_path / "ckpt" / cell / "lock.json"


def _hold(tmp_path, **holder):
    import socket

    path = _lock_path(tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": socket.gethostname(), "since": "then", **holder}))
    return path


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, digits_root):
    import subprocess

    from llqr.train.lock import CellLocked

    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        path = _hold(tmp_path, pid=sleeper.pid, slurm_job_id="4242")
        with pytest.raises(CellLocked, match=f"pid {sleeper.pid}, SLURM job 4242 .*lock {path}"):
            _run(tmp_path, digits_root)
        assert not (tmp_path / "results").exists() and path.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_lock_left_by_a_dead_process_on_this_host_is_taken_over_and_released(tmp_path, digits_root):
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    path = _hold(tmp_path, pid=dead.pid)
    summary, lines = _run(tmp_path, digits_root)
    assert summary["status"] == "ok" and not path.exists()
    assert any(f"took over the lock {path}" in line and "its process is gone" in line for line in lines), lines


def test_a_lock_from_another_host_needs_the_flag(tmp_path, digits_root):
    from llqr.train.lock import CellLocked

    _hold(tmp_path, host="node-elsewhere", pid=1)
    with pytest.raises(CellLocked, match="host node-elsewhere pid 1.*--take-over-lock"):
        _run(tmp_path, digits_root)
    lines = []
    run(resolve("digits-mlp-smoke", {}), cell_id="t/default/seed42", results_dir=tmp_path / "results",
        checkpoints_dir=tmp_path / "ckpt", data_root=digits_root, take_over_lock=True, out=lines.append)
    assert any("taken over on request" in line for line in lines)


def test_a_preempted_run_releases_its_lock(tmp_path, digits_root):
    _preempted_at_31(tmp_path, digits_root)
    assert not _lock_path(tmp_path).exists()
