"""Shared helpers: the repo, a Snakemake runner, tiny workflow configs written per test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import xla_test_flags

xla_test_flags.apply()  # before any test imports JAX; Snakemake jobs inherit it

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def run_snakemake(args, workdir: Path, env=None, check=True, timeout=600) -> subprocess.CompletedProcess:
    cmd = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def slurm_free_env(tmp: Path) -> dict:
    """The environment for Snakemake subprocesses that must not see SLURM: no SLURM tools on PATH
    (only the venv, which, sh and bash), so the slurm executor plugin does not probe a controller
    (about 10 s per start where the tools exist but no controller runs)."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("which", "sh", "bash"):
        found = shutil.which(tool)
        if found and not (bin_dir / tool).exists():
            (bin_dir / tool).symlink_to(found)
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{bin_dir}"}


def write_yaml(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(obj, sort_keys=False))
    return path


@pytest.fixture(scope="session", autouse=True)
def jax_compilation_cache(tmp_path_factory):
    """One persistent compilation cache for the session (shared by its xdist workers), fresh each
    session (so tests stay hermetic):
    the many small runs here compile the same model inits and steps again and again, in this process
    and in the Snakemake jobs the workflow tests start (they inherit the variable)."""
    import jax

    if os.environ.get("LLQR_JAX_CACHE") == "0":
        return None
    base = tmp_path_factory.getbasetemp()
    # under pytest-xdist every worker has its own basetemp below one shared folder: share the cache
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = str(shared / "jax-cache")
    os.makedirs(path, exist_ok=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    return path


@pytest.fixture
def presets_copy(tmp_path, monkeypatch):
    """A private copy of config/presets that a test may edit (LLQR_PRESETS_DIR points at it)."""
    target = tmp_path / "presets"
    shutil.copytree(REPO / "config" / "presets", target)
    monkeypatch.setenv("LLQR_PRESETS_DIR", str(target))
    return target


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory):
    """A data root holding the prepared digits dataset (data/digits/digits.npz), shared by all tests."""
    from llqr.data import digits

    root = tmp_path_factory.mktemp("digits-data")
    digits.prepare(root / "digits" / digits.FILENAME)
    return root


# Modules that take longest (summed test durations of a full run on 2 cores), longest first: with
# --dist loadscope --no-loadscope-reorder (pyproject.toml) pytest-xdist hands modules to the workers
# in collection order, so starting the long ones first keeps both workers busy to the end instead of
# leaving one running a long module alone (xdist's own reorder sorts by test count, not duration).
LONG_MODULES = ("test_slurm", "test_llqr", "test_optimizer_studies", "test_workflow", "test_golden",
                "test_workflow_tuning", "test_translation", "test_bad_configs", "test_llqr_routes", "test_singd",
                "test_study_models", "test_workflow_rerun", "test_beam", "test_singd_models", "test_noisy_gd_chunks",
                "test_iwslt_prep", "test_train", "test_workflow_cifar", "test_rerun", "test_llqr_clip")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONG_MODULES)}
    order = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (rank.get(item.module.__name__, len(rank)), order[id(item)]))


def run_regression_cli(tmp_path: Path, overrides: list) -> list:
    """A short regression run through ``python -m llqr.train``'s entry point (its data under
    tmp_path/data): checks the summary is ok on test_loss (lower is better) and that the loss fell;
    returns the metrics events."""
    import json

    import numpy as np

    from llqr.workflow.train_cli import main

    args = [*overrides, "max_steps=40", "test_eval_freq=20", "logging_freq=1", "preempt_handling=false",
            "--results-dir", str(tmp_path / "results"), "--checkpoints-dir", str(tmp_path / "ckpt"),
            "--data-root", str(tmp_path / "data")]
    assert main(args) == 0
    (summary_path,) = (tmp_path / "results").rglob("summary.json")
    summary = json.loads(summary_path.read_text())
    assert (summary["status"], summary["metric"], summary["mode"]) == ("ok", "test_loss", "min")
    events = [json.loads(line) for line in summary_path.with_name("metrics.jsonl").read_text().splitlines()]
    train = [e["train_loss"] for e in events if e["event"] == "train"]
    tests = [e["test_loss"] for e in events if e["event"] in ("eval", "final_eval")]
    assert np.mean(train[-5:]) < np.mean(train[:5]) and tests[-1] < tests[0]  # one batch's loss is noisy
    return events
