"""Run many short command-line invocations of ``snakemake`` and ``python -m llqr.plan`` from one
process that imported them once, each in a forked child with its own argv, working directory and
output files: the same entry points and arguments as separate processes, without paying the
imports (1.3 s of CPU for snakemake alone) once per invocation.

    python tests/forked_cli.py JOBS.json RESULTS.json [PARALLEL]

JOBS.json: a list of {"tool": "snakemake" | "plan", "argv": [...], "cwd": ..., "out": path, "err": path}.
RESULTS.json: the exit status of each job, in order. Only for tests: a child must exit, so every
path out of the entry point (return, SystemExit, an exception) ends in ``os._exit``.
"""

from __future__ import annotations

import json
import os
import sys
import traceback


def _entry(tool: str):
    if tool == "snakemake":
        from snakemake.cli import main
    elif tool == "plan":
        from llqr.workflow.plan import main
    else:
        raise ValueError(f"unknown tool {tool!r}")
    return main


def _child(job: dict) -> None:
    code = 70
    try:
        os.chdir(job["cwd"])
        for fd, path in ((1, job["out"]), (2, job["err"])):
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(handle, fd)
            os.close(handle)
        sys.argv = [job["tool"], *job["argv"]]
        result = _entry(job["tool"])()
        code = result if isinstance(result, int) else 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if not isinstance(stop.code, int | type(None)):
            print(stop.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - the child reports every failure as its exit status
        traceback.print_exc()
        code = 70
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main(jobs_path: str, results_path: str, parallel: int = 2) -> None:
    jobs = json.loads(open(jobs_path).read())
    for tool in {job["tool"] for job in jobs}:
        _entry(tool)  # import once, before forking
    codes: list[int | None] = [None] * len(jobs)
    running: dict[int, int] = {}
    pending = list(range(len(jobs)))
    while pending or running:
        while pending and len(running) < parallel:
            i = pending.pop(0)
            pid = os.fork()
            if pid == 0:
                _child(jobs[i])
            running[pid] = i
        pid, status = os.wait()
        codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
    with open(results_path, "w") as out:
        json.dump(codes, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 2)
