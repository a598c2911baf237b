"""Cost preview: the cells of a target with their resources and estimated GPU-hours, by surface.

    python -m llqr.plan paper --configfile config/paper.yaml            every cell, grouped by surface
    python -m llqr.plan studies --configfile config/paper.yaml --summary  one line per surface
    python -m llqr.plan llqr_cifar lr_free --configfile config/paper.yaml --json plan.json
    python -m llqr.plan calibrate results/cells/<cell> [...] [--write]   measured step times
    python -m llqr.plan estimate --configfile config/paper.yaml [--write] FLOP-based step times

Targets are groups (demo, demo_extra, paper, studies = svag_study + singd_study + hlr_study),
surface names, or ``all``; the default is the demo, as for ``snakemake``. Steps come from each
cell's config and the dataset sizes, seconds per step from config/step_times.yaml (per preset,
measured or estimated, each entry saying which), and resources from the workflow config exactly as
the train rule gets them. Tuning studies are priced as their trials at the tuning budget. Nothing is
read from data or results: the paper matrix previews in seconds on a laptop.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..config import ConfigError
from .cost import STEP_TIMES, StepTime, cell_cost, load_step_times
from .matrix import load_workflow_config, validate_schema  # noqa: F401 (the schema check, as before)
from .resources import preset_resources, resource
from .surface_spec import TARGET_GROUPS
from .validator import check_workflow

REPO = Path(__file__).resolve().parents[2]


def _config(files) -> dict:
    import yaml

    try:
        config = load_workflow_config(REPO / "config" / "config.yaml", *files)
    except (OSError, ValueError, yaml.YAMLError) as exc:  # a missing file, invalid YAML
        raise ConfigError(f"cannot read the workflow config: {exc}") from None
    return config


def select(matrix, targets) -> list[str]:
    """Surface names for the targets (groups, surfaces, 'all'), in config order, each once."""
    names = []
    for target in targets:
        if target == "all":
            names += list(matrix.surfaces)
        elif target in TARGET_GROUPS:
            found = matrix.group(target)
            if not found:
                raise SystemExit(f"error: no '{target}' surfaces in the config (add --configfile config/paper.yaml)")
            names += found
        elif target in matrix.surfaces:
            names.append(target)
        else:
            raise SystemExit(f"error: '{target}' is neither a group ({', '.join(TARGET_GROUPS)}, all) nor a surface "
                             f"(surfaces: {', '.join(matrix.surfaces)})")
    return list(dict.fromkeys(names))


def plan(config: dict, targets, step_times: dict) -> dict:
    """Rows per cell and per study, surface subtotals and the total (shared cells counted once);
    the config is checked first by the workflow's validator (llqr.workflow.validator.check_workflow)."""
    matrix = check_workflow(config)
    names = select(matrix, targets)
    rows, surfaces, studies = {}, [], {}

    def priced(preset, run_config):
        """(resources, GPU count, cost of one run) of a preset's run."""
        res = preset_resources(config, preset)
        gpus = int(resource(res, "gpu") or 0)
        return res, gpus, cell_cost(run_config, gpus, step_times.get(preset))

    def row_for(cell):
        if cell.id not in rows:
            res, gpus, cost = priced(cell.preset, cell.config)
            rows[cell.id] = {"cell": cell.id, "preset": cell.preset, "gpus": gpus,
                             "cpus": resource(res, "cpus_per_task"), "mem_mb": resource(res, "mem_mb"),
                             "runtime_min": resource(res, "runtime"), "study": cell.study, **cost}
        return rows[cell.id]

    for name in names:
        surface = matrix.surfaces[name]
        cells = [row_for(matrix.cells[cid]) for cid in surface.cell_ids]
        for cid in surface.cell_ids:
            study = matrix.cells[cid].study
            if study and study not in studies:
                s = matrix.studies[study]
                _res, gpus, one = priced(s.preset, s.config)
                studies[study] = {"study": study, "preset": s.preset, "trials": s.trials, "gpus": gpus,
                                  "steps": one["steps"] * s.trials, "source": one["source"],
                                  "hours": None if one["hours"] is None else one["hours"] * s.trials,
                                  "gpu_hours": None if one["gpu_hours"] is None else one["gpu_hours"] * s.trials}
        surfaces.append({"surface": name, "group": surface.group, "cells": len(cells), "cell_ids": surface.cell_ids,
                         "steps": sum(r["steps"] for r in cells), "gpu_hours": _sum(r["gpu_hours"] for r in cells),
                         "unpriced": sum(r["hours"] is None for r in cells)})
    everything = list(rows.values()) + list(studies.values())
    total = {"cells": len(rows), "studies": len(studies), "steps": sum(r["steps"] for r in everything),
             "gpu_hours": _sum(r["gpu_hours"] for r in everything),
             "cpu_job_hours": _sum(r["hours"] for r in everything if r["gpus"] == 0),
             "unpriced": sum(r["hours"] is None for r in everything)}
    return {"targets": list(targets), "surfaces": surfaces, "cells": rows, "studies": studies, "total": total}


def _sum(values) -> float:
    return float(sum(v for v in values if v is not None))


def _h(value) -> str:
    return "?" if value is None else f"{value:,.1f}" if value >= 10 else f"{value:,.2f}"


def render(result: dict, summary: bool) -> str:
    """The preview as text: per surface its cells (unless ``summary``), subtotal lines, then the total."""
    out = []
    cells = result["cells"]
    if not summary:
        header = (f"  {'cell':<74} {'gpu':>3} {'cpu':>3} {'mem_mb':>7} {'limit_h':>7} {'steps':>10} {'h/run':>7} "
                  f"{'GPU-h':>8}")
    for s in result["surfaces"]:
        out.append(f"{s['surface']} ({s['group']}): {s['cells']} cells, {s['steps']:,} steps, "
                   f"{_h(s['gpu_hours'])} GPU-h" + (f", {s['unpriced']} without a step time" if s["unpriced"] else ""))
        if summary:
            continue
        out.append(header)
        for cid in s["cell_ids"]:
            r = cells[cid]
            limit = r["runtime_min"] / 60 if isinstance(r["runtime_min"], (int, float)) else None
            flag = " > limit: resumes over retries" if limit and r["hours"] and r["hours"] > limit else ""
            out.append(f"  {cid:<74} {r['gpus']:>3} {r['cpus']:>3} {r['mem_mb']:>7} {_h(limit):>7} "
                       f"{r['steps']:>10,} {_h(r['hours']):>7} {_h(r['gpu_hours']):>8}{flag}")
        out.append("")
    if result["studies"]:
        out.append(f"tuning studies: {len(result['studies'])}")
        if not summary:
            for sid, r in result["studies"].items():
                out.append(f"  {sid:<74} {r['gpus']:>3} {r['trials']:>4} trials {r['steps']:>10,} steps "
                           f"{_h(r['gpu_hours']):>8} GPU-h")
        out.append("")
    t = result["total"]
    out.append(f"TOTAL {', '.join(result['targets'])}: {t['cells']} cells + {t['studies']} tuning studies, "
               f"{t['steps']:,} steps, {_h(t['gpu_hours'])} GPU-hours"
               + (f" (+ {_h(t['cpu_job_hours'])} hours of CPU-only jobs)" if t["cpu_job_hours"] else "")
               + (f"; {t['unpriced']} runs without a step time (not in the total)" if t["unpriced"] else ""))
    out.append("Step times: config/step_times.yaml (per preset; 'estimate' entries are FLOP-based, replace them "
               "with `python -m llqr.plan calibrate results/cells/<cell> --write`). Shared cells count once.")
    return "\n".join(out)


def preview(args) -> int:
    config = _config(args.configfile)
    step_times = load_step_times(args.step_times)
    result = plan(config, args.targets or ["demo"], step_times)
    print(render(result, args.summary))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
        print(f"wrote {args.json}")
    return 0


def _write_table(path: Path, updates: dict) -> None:
    import yaml

    data = yaml.safe_load(path.read_text()) if path.is_file() else None
    data = data or {}
    presets = data.setdefault("presets", {})
    for preset, st in updates.items():
        presets[preset] = {"seconds": float(f"{st.seconds:.6g}"), "source": st.source}
    data["presets"] = dict(sorted(presets.items()))
    header = ("# Seconds per optimizer step, per preset, on one GPU (llqr.plan prices cells with it).\n"
              "# 'measured' entries come from `python -m llqr.plan calibrate`, 'estimate' entries from\n"
              "# `python -m llqr.plan estimate` (model FLOPs; see llqr/flops.py). Edit or recalibrate freely.\n")
    path.write_text(header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def calibrate(args) -> int:
    """Measured seconds per step from finished cells (their final evaluation's ms_per_step)."""
    found = {}
    for directory in args.cells:
        metrics, record = Path(directory) / "metrics.jsonl", Path(directory) / "record.json"
        if not metrics.is_file() or not record.is_file():
            raise SystemExit(f"error: {directory} has no metrics.jsonl/record.json (a finished cell directory?)")
        ms = None
        for line in metrics.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "final_eval" and event.get("ms_per_step"):
                ms = float(event["ms_per_step"])
        if ms is None:
            raise SystemExit(f"error: {directory} recorded no ms_per_step (run it with this version of llqr)")
        rec = json.loads(record.read_text())
        preset = rec["config"]["preset"]
        device = (rec.get("accelerator") or {}).get("device_kind") or (rec.get("accelerator") or {}).get("platform")
        found[preset] = StepTime(ms / 1000.0, f"measured: {rec['cell']} on {device or 'unknown device'}")
        print(f"{preset}: {ms / 1000.0:.4g} s/step ({found[preset].source})")
    if args.write:
        _write_table(Path(args.step_times or STEP_TIMES), found)
        print(f"updated {args.step_times or STEP_TIMES}")
    return 0


def estimate(args) -> int:
    """FLOP-based step times for the matrix's presets that have no measured entry."""
    from ..config import build_config
    from .flops import estimate_seconds
    from .matrix import preset_base

    config = _config(args.configfile)
    matrix = check_workflow(config)
    known = load_step_times(args.step_times)
    presets = sorted({c.preset for c in matrix.cells.values()})
    found = {}
    for preset in presets:
        if preset in known and known[preset].source.startswith("measured"):
            print(f"{preset}: measured entry kept ({known[preset].seconds:.4g} s/step)")
            continue
        cfg = build_config(preset_base(preset)[1])
        seconds, source = estimate_seconds(cfg, args.peak_tflops, args.utilisation)
        found[preset] = StepTime(seconds, source)
        print(f"{preset}: {seconds:.4g} s/step ({source})")
    if args.write:
        _write_table(Path(args.step_times or STEP_TIMES), found)
        print(f"updated {args.step_times or STEP_TIMES}")
    return 0


def main(argv=None) -> int:
    """The CLI; any config problem is one line ``error: ...`` and exit status 2."""
    try:
        return _main(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--configfile", nargs="+", default=[], help="extra workflow config files (after config.yaml)")
    common.add_argument("--step-times", default=None, help=f"step-time table (default {STEP_TIMES.relative_to(REPO)})")
    if argv and argv[0] == "calibrate":
        p = argparse.ArgumentParser(prog="python -m llqr.plan calibrate", parents=[common],
                                    description="Measured seconds per step from finished cell directories.")
        p.add_argument("cells", nargs="+", help="results/cells/<cell> directories")
        p.add_argument("--write", action="store_true", help="store them in the step-time table")
        return calibrate(p.parse_args(argv[1:]))
    if argv and argv[0] == "estimate":
        p = argparse.ArgumentParser(prog="python -m llqr.plan estimate", parents=[common],
                                    description="FLOP-based step times for presets without a measured one.")
        p.add_argument("--peak-tflops", type=float, default=156.0, help="GPU peak (default: A100 TF32, 156)")
        p.add_argument("--utilisation", type=float, default=0.3, help="assumed fraction of peak (default 0.3)")
        p.add_argument("--write", action="store_true", help="store them in the step-time table")
        return estimate(p.parse_args(argv[1:]))
    p = argparse.ArgumentParser(prog="python -m llqr.plan", parents=[common], description=__doc__.splitlines()[0],
                                epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("targets", nargs="*",
                   help="groups (demo, demo_extra, paper, studies, svag_study, singd_study, hlr_study), surfaces, "
                        "or all; default: demo")
    p.add_argument("--summary", action="store_true", help="one line per surface, no cell rows")
    p.add_argument("--json", default=None, help="also write the whole plan as JSON")
    return preview(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
