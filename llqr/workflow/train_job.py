"""The train rule's entry point: resolved config JSON in, declared outputs out."""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

from ..config import build_config
from ..data.errors import DataError
from .joblog import job_log


def train_from_workflow(config_json: str, cell_id: str, *, results_dir, checkpoints_dir, data_root, log_path,
                        tuned=None, settings=None) -> int:
    """Run one cell for Snakemake; returns the process exit status (75 = preempted, retry).
    ``tuned``: a study's best.json whose parameters go on top of the config; ``settings``: the
    cell's bookkeeping keys (checkpoint_freq, ...), which are not in its config params."""
    with job_log(log_path) as (out, log):
        try:
            from ..train.compile_cache import enable_compilation_cache
            from ..train.loop import PREEMPTED_EXIT_CODE, Preempted, run

            enable_compilation_cache(Path(checkpoints_dir) / ".jax_cache")

            config = {**json.loads(config_json), **(settings or {})}
            if tuned:
                from .tune_job import apply_best

                config = apply_best(config, tuned)
                out(f"[{cell_id}] tuned by {tuned}")
            cfg = build_config(config)
            command = f"snakemake rule train, cell {cell_id} (argv: {' '.join(sys.argv)})"
            # Data the workflow does not manage (dataset_dir) is no declared input: a data error
            # must fail the job, not record a failed-data result Snakemake would never redo.
            run(cfg, cell_id=cell_id, results_dir=results_dir, checkpoints_dir=checkpoints_dir,
                data_root=data_root, command=command, inputs=[tuned] if tuned else [],
                record_data_failure=not cfg.dataset_dir, out=out)
        except DataError as exc:
            out(f"[{cell_id}] data error in dataset_dir {cfg.dataset_dir}: {exc}; "
                "fix the data there and rerun snakemake (the cell is retrained)")
            return 3
        except Preempted as exc:
            out(str(exc))
            return PREEMPTED_EXIT_CODE
        except Exception as exc:  # noqa: BLE001 - recorded in the log, then the job fails
            log.write(traceback.format_exc())
            out(f"[{cell_id}] failed: {exc}")
            return 1
    return 0
