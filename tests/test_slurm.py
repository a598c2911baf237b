"""The workflow on a real SLURM cluster (tests/slurm/local_cluster.sh): the executor plugin, real sbatch.

* A shrunken demo through ``--profile profiles/slurm``: every training cell is a SLURM job, and its
  outputs equal a local run's.
* Preemption: a running cell gets SIGUSR1 the way a cluster warns before preemption; the runner
  checkpoints and exits 75, the profile's retry submits a new job, the run resumes and ends with the
  metrics of an uninterrupted run; a cell that had already finished is not run again.

Skipped, with the reason, where no SLURM cluster answers; CI brings one up and sets
LLQR_REQUIRE_SLURM=1, which turns that skip into a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO, SNAKEMAKE, run_snakemake, write_yaml
from test_workflow import DEFAULT_SURFACES

pytestmark = [pytest.mark.workflow, pytest.mark.slurm]

# Flags for a cluster without slurmdbd (no sacct) and without accounts: see docs/cluster.md,
# "Clusters without slurmdbd".
NO_DB_FLAGS = ["--slurm-status-command", "squeue", "--slurm-no-account", "--slurm-init-seconds-before-status-checks",
               "2", "--seconds-between-status-checks", "1", "--slurm-keep-successful-logs"]


def _cluster_problem() -> str | None:
    for tool in ("sbatch", "squeue", "sinfo", "scancel"):
        if shutil.which(tool) is None:
            return f"no SLURM client tools ({tool} not on PATH); start one with tests/slurm/local_cluster.sh start"
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20).stdout.split()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sinfo failed: {exc}"
    if not any(s.rstrip("*~#") in ("idle", "mix", "alloc") for s in states):
        return f"no usable SLURM node (sinfo states: {states or 'none'})"
    return None


@pytest.fixture(scope="module", autouse=True)
def cluster():
    problem = _cluster_problem()
    if problem:
        if os.environ.get("LLQR_REQUIRE_SLURM") == "1":
            pytest.fail(f"LLQR_REQUIRE_SLURM=1 but {problem}")
        pytest.skip(problem)


def slurm_snakemake(args, workdir: Path, timeout: int = 420) -> subprocess.CompletedProcess:
    """Snakemake with the repo's slurm profile, inside `timeout -k` (a hung poller must not hang CI)."""
    cmd = ["timeout", "-k", "30", str(timeout), SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory",
           str(workdir), "--profile", str(REPO / "profiles" / "slurm"), *NO_DB_FLAGS, *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc, what: str) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"{what} failed ({proc.returncode}):\n{out[-5000:]}"
    return out


def _config(tmp_path: Path, name: str, variants: list) -> Path:
    surface = {"group": "demo", "title": name, "metric": "test_accuracy", "presets": ["digits-mlp-smoke"],
               "seeds": [3], "axes": {"opt": variants}}
    return write_yaml(tmp_path / f"{name}.yaml", {"surfaces": {**{n: None for n in DEFAULT_SURFACES}, name: surface}})


def _jobs(workdir: Path) -> dict:
    """SLURM job logs the plugin kept, per cell directory name: one file per sbatch."""
    logs = workdir / ".snakemake" / "slurm_logs" / "rule_train"
    return {d.name: sorted(p.name for p in d.glob("*.log")) for d in logs.iterdir()} if logs.is_dir() else {}


def _outcome(workdir: Path, cell: str) -> dict:
    """What a run produced, without wall-clock fields: its summary metric and every evaluation."""
    base = workdir / "results" / "cells" / cell
    summary = json.loads((base / "summary.json").read_text())
    events = [json.loads(line) for line in (base / "metrics.jsonl").read_text().splitlines()]
    evals = [{k: v for k, v in e.items() if k not in ("elapsed_s", "ms_per_step")}
             for e in events if e["event"] in ("eval", "final_eval")]
    return {"status": summary["status"], "final": summary["final"], "best": summary["best"], "evals": evals}


SHRUNKEN = [
    {"label": "sgd", "set": {"optimizer": "sgd", "max_steps": 30}},
    {"label": "polyak", "set": {"optimizer": "polyak", "learning_rate": 0.05, "max_steps": 30}},
    {"label": "adamw", "set": {"optimizer": "adamw", "learning_rate": 0.002, "max_steps": 30}},
]


def test_shrunken_demo_runs_every_cell_as_a_slurm_job_with_the_local_outputs(tmp_path):
    config = _config(tmp_path, "shrunk", SHRUNKEN)
    on_slurm, local = tmp_path / "slurm", tmp_path / "local"
    on_slurm.mkdir()
    local.mkdir()
    started = time.time()
    out = _finish(slurm_snakemake(["--configfile", str(config)], on_slurm), "the SLURM run")
    print(f"SLURM run of 3 cells + aggregation: {time.time() - started:.1f} s")
    run_snakemake(["--cores", "2", "--configfile", str(config)], local)
    cells = sorted(p.parent.relative_to(local / "results" / "cells").as_posix()
                   for p in (local / "results" / "cells").rglob("summary.json"))
    assert len(cells) == 3
    jobs = _jobs(on_slurm)
    assert len(jobs) == 3 and all(len(files) == 1 for files in jobs.values()), jobs  # one sbatch per cell
    assert out.count("has been submitted with SLURM jobid") == 3
    for cell in cells:
        assert _outcome(on_slurm, cell) == _outcome(local, cell), cell
    assert (on_slurm / "results" / "surfaces" / "shrunk" / "table.csv").read_text() == (
        local / "results" / "surfaces" / "shrunk" / "table.csv").read_text()


def _running_job(name_part: str, timeout: float = 120.0) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        lines = subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i %k"], capture_output=True, text=True).stdout
        for line in lines.splitlines():
            job, comment = line.split(" ", 1)
            if name_part in comment:
                return job
        time.sleep(0.5)
    raise AssertionError(f"no running SLURM job for {name_part} within {timeout} s")


# The long cell: 330 steps (batch 64, ~8 s on one core), checkpoints every 25; the test signals it as soon as
# its first checkpoint exists, so it is mid-run with hundreds of steps to go.
LONG = "epochs=15"


def test_preempted_slurm_job_checkpoints_is_resubmitted_and_resumes_to_the_uninterrupted_result(tmp_path):
    long = {"optimizer": "sgd", "total_epochs": 15, "checkpoint_freq": 25, "test_eval_freq": 100, "report_freq": 25}
    config = _config(tmp_path, "preempt", [{"label": "short", "set": {"optimizer": "sgd", "max_steps": 20}},
                                           {"label": "long", "set": long}])
    on_slurm, local = tmp_path / "slurm", tmp_path / "local"
    on_slurm.mkdir()
    local.mkdir()
    run_snakemake(["--cores", "2", "--configfile", str(config)], local)  # the uninterrupted reference
    cells = {p.parent.relative_to(local / "results" / "cells").as_posix()
             for p in (local / "results" / "cells").rglob("summary.json")}
    long_cell = next(c for c in cells if LONG in c)
    short_cell = next(c for c in cells if "max_steps=20" in c)

    proc = slurm_snakemake(["--configfile", str(config), "--cores", "2"], on_slurm)
    job = _running_job(LONG)
    orbax = on_slurm / "checkpoints" / long_cell
    deadline = time.time() + 120
    while not list(orbax.glob("*/orbax/*")) and time.time() < deadline:  # a checkpoint exists: mid-run
        time.sleep(0.2)
    assert list(orbax.glob("*/orbax/*")), "the long cell never wrote a checkpoint"
    short_summary = on_slurm / "results" / "cells" / short_cell / "summary.json"
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    out = _finish(proc, "the preempted SLURM run")

    jobs = _jobs(on_slurm)
    long_jobs = next(files for name, files in jobs.items() if LONG in name)
    assert len(long_jobs) == 2, jobs  # the preempted job and its resubmission
    first_log = (on_slurm / ".snakemake" / "slurm_logs" / "rule_train" /
                 next(n for n in jobs if LONG in n) / long_jobs[0]).read_text()
    second_log = (on_slurm / ".snakemake" / "slurm_logs" / "rule_train" /
                  next(n for n in jobs if LONG in n) / long_jobs[1]).read_text()
    assert "preempted at step" in first_log and "checkpoint saved" in first_log
    assert "resuming from checkpoint at step" in second_log
    assert _outcome(on_slurm, long_cell) == _outcome(local, long_cell)
    # the finished cell ran once, its outputs untouched by the retry
    assert len(next(files for name, files in jobs.items() if "max_steps=20" in name)) == 1
    assert short_summary.is_file() and _outcome(on_slurm, short_cell) == _outcome(local, short_cell)
    assert out.count("has been submitted with SLURM jobid") == 3  # short, long, long again
