"""The tune rule's entry point: study spec JSON in, best.json out, progress in the job's log."""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

from .joblog import job_log


def tune_from_workflow(spec_json: str, best_path, *, checkpoints_dir, data_root, log_path) -> int:
    spec = json.loads(spec_json)
    with job_log(log_path) as (out, log):
        try:
            from ..train.compile_cache import enable_compilation_cache
            from ..tune.study import run_study

            enable_compilation_cache(Path(checkpoints_dir) / ".jax_cache")

            sampler = spec.get("sampler", "tpe")
            out(f"[{spec['id']}] tuning {', '.join(spec['space'])}: {spec['trials']} {sampler} trials "
                f"(seed {spec['seed']}), objective {spec['metric']} ({spec['mode']}) (argv: {' '.join(sys.argv)})")
            run_study(spec, Path(best_path).parent, checkpoints_dir=Path(checkpoints_dir) / "tuning" / spec["id"],
                      data_root=data_root, out=out)
        except Exception as exc:  # noqa: BLE001 - recorded in the log, then the job fails
            log.write(traceback.format_exc())
            out(f"[{spec['id']}] tuning failed: {exc}")
            return 1
    return 0


def apply_best(config: dict, best_path) -> dict:
    """``config`` with the study's best parameters on top (the tuned cells' run config)."""
    from ..config import apply_overrides

    best = json.loads(Path(best_path).read_text(encoding="utf-8"))
    return apply_overrides(config, best["params"])
