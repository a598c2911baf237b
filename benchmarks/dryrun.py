"""Time the paper-matrix dry-run against a trivial Snakefile with the same job graph.

Snakemake's own DAG cost grows with the job count, so an absolute dry-run time says little
about how much the workflow's Python (config resolution, matrix expansion, input functions)
adds. Measuring a trivial Snakefile with the same shape (data -> train -> aggregate -> target)
in the same process run gives that overhead as a ratio; the goal is real/baseline <= 1.5.

    .venv/bin/python benchmarks/dryrun.py [--repeats 3] [--json out.json] [--repo PATH]

Exits 0 whatever the ratio: it is a measurement, not a gate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL = 1.5
TARGET = "paper"
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def parse_job_stats(text: str) -> dict[str, int]:
    """Per-rule counts plus ``total`` from the "Job stats:" table a dry-run prints last."""
    lines = text.splitlines()
    try:
        start = max(i for i, line in enumerate(lines) if line.strip() == "Job stats:")
    except ValueError:
        raise RuntimeError("no 'Job stats:' table in the snakemake output") from None
    counts: dict[str, int] = {}
    for line in lines[start + 1 :]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "job" or set(parts[0]) == {"-"}:
            continue
        name, count = parts
        if not count.isdigit():
            break
        counts[name] = int(count)
        if name == "total":
            break
    if "total" not in counts:
        raise RuntimeError("the 'Job stats:' table has no 'total' row")
    return counts


def dry_run(snakefile: Path, args: list[str]) -> tuple[float, dict[str, int]]:
    """Wall time and job stats of one ``snakemake -n`` in a fresh working directory.

    A fresh directory each time keeps ``.snakemake`` metadata and outputs of earlier runs from
    making either side cheaper.
    """
    with tempfile.TemporaryDirectory(prefix="dryrun-work-") as workdir:
        cmd = [SNAKEMAKE, "-n", *args, "--cores", "1", "--snakefile", str(snakefile), "--directory", workdir]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return elapsed, parse_job_stats(proc.stdout + "\n" + proc.stderr)


def baseline_snakefile(n_data: int, n_train: int, n_agg: int) -> str:
    """A Snakefile with the real graph's shape and nothing else: touch-only rules, no config.

    Each train job reads one data file (round-robin) and each aggregate job reads its
    round-robin share of the train outputs, so fan-in matches the real matrix closely enough
    that the DAG work is comparable.
    """
    return f'''N_DATA = {n_data}
N_TRAIN = {n_train}
N_AGG = {n_agg}

wildcard_constraints:
    i="[0-9]+",


rule {TARGET}:
    input:
        expand("agg/{{i}}.txt", i=range(N_AGG)),


rule aggregate:
    input:
        lambda wc: expand("train/{{i}}.txt", i=range(int(wc.i), N_TRAIN, N_AGG)),
    output:
        "agg/{{i}}.txt",
    shell:
        "touch {{output}}"


rule train:
    input:
        lambda wc: f"data/{{int(wc.i) % N_DATA}}.txt",
    output:
        "train/{{i}}.txt",
    shell:
        "touch {{output}}"


rule data:
    output:
        "data/{{i}}.txt",
    shell:
        "touch {{output}}"
'''


def main(argv=None) -> int:
    here = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="runs of each side (median reported)")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    ap.add_argument("--repo", type=Path, default=here, help="workflow repository (default: %(default)s)")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    repo = args.repo.resolve()
    real_args = [TARGET, "--configfile", str(repo / "config" / "paper.yaml")]

    # One untimed real run first: it gives the job structure the baseline must copy.
    _, per_rule = dry_run(repo / "Snakefile", real_args)
    total = per_rule["total"]
    n_train = per_rule.get("train", 0)
    n_agg = per_rule.get("aggregate", 0)
    n_target = per_rule.get(TARGET, 0)
    n_data = total - n_train - n_agg - n_target
    if n_target != 1 or n_agg < 1 or n_train < n_agg or n_data < 1:
        raise SystemExit(f"unexpected job structure for the baseline: {per_rule}")

    with tempfile.TemporaryDirectory(prefix="dryrun-baseline-") as tmp:
        base_file = Path(tmp) / "Snakefile"
        base_file.write_text(baseline_snakefile(n_data, n_train, n_agg))
        real_times, base_times = [], []
        for _ in range(args.repeats):
            t, stats = dry_run(repo / "Snakefile", real_args)
            if stats["total"] != total:
                raise SystemExit(f"real job count changed between runs: {stats['total']} != {total}")
            real_times.append(t)
            t, stats = dry_run(base_file, [TARGET])
            if stats["total"] != total:
                raise SystemExit(f"baseline has {stats['total']} jobs but the real dry-run has {total}: {stats}")
            base_times.append(t)

    real_s = statistics.median(real_times)
    base_s = statistics.median(base_times)
    ratio = real_s / base_s
    meets = ratio <= GOAL

    rules = ", ".join(f"{k} {v}" for k, v in per_rule.items() if k != "total")
    print(f"dry-run of '{TARGET}' ({total} jobs: {rules})")
    print(f"{'':10s} {'median s':>9s}  runs")
    print(f"{'real':10s} {real_s:9.3f}  " + " ".join(f"{t:.2f}" for t in real_times))
    print(f"{'baseline':10s} {base_s:9.3f}  " + " ".join(f"{t:.2f}" for t in base_times))
    print(f"{'ratio':10s} {ratio:9.2f}  goal <= {GOAL}: {'MET' if meets else 'NOT MET'}")

    if args.json:
        record = {
            "real_s": real_s,
            "baseline_s": base_s,
            "ratio": ratio,
            "jobs": total,
            "per_rule": {k: v for k, v in per_rule.items() if k != "total"},
            "repeats": args.repeats,
            "goal": GOAL,
            "meets_goal": meets,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
