"""``python -m llqr.train preset=NAME key=value ...``: one run outside Snakemake.

The run lands where the workflow would put the same cell (results/cells/<cell id>/), so a
hand-run cell and a workflow cell with the same resolved config share results and checkpoints.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from ..config import ConfigError, check_path_name, parse_overrides, resolve
from ..models import ModelNotAvailable
from .matrix import BOOKKEEPING_KEYS, cell_id as make_cell_id, normalise, preset_base

EPILOG = """examples:
  python -m llqr.train preset=digits-mlp
  python -m llqr.train preset=digits-mlp optimizer=polyak learning_rate=0.05 lr_scheduler=cosine_annealing
  python -m llqr.train preset=digits-mlp lr_scheduler.t_max=12 --print-config
  python -m llqr.train --list-keys            every key: type, default, allowed values, when read, doc
exit status: 0 ok or diverged (see summary.json), 2 bad config, 3 data error, 4 unavailable feature,
5 no intact checkpoint (the message names the folder to delete), 6 another run holds the cell's lock,
75 preempted (checkpoint saved; run again to resume)."""


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m llqr.train", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="preset=NAME and config overrides")
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--checkpoints-dir", default="checkpoints")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--cell-id", default=None, help="override the derived cell id")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--list-keys", action="store_true",
                        help="print every config key (type, default, allowed values, when it is read, doc) and exit")
    parser.add_argument("--markdown", action="store_true",
                        help="with --list-keys: as docs/configuration.md (a Markdown table)")
    parser.add_argument("--take-over-lock", action="store_true",
                        help="take the cell's lock even if another host holds it (only if that run is gone)")
    args = parser.parse_args(argv)
    if args.markdown and not args.list_keys:
        parser.error("--markdown goes with --list-keys")
    return args


def resolve_cell(items: list[str]):
    """(RunConfig, cell id) from CLI items, normalised as the workflow does and checked by the
    workflow's validator (llqr.workflow.validator.check_run_config): a config the runner would refuse is a
    ConfigError here."""
    from .validator import check_run_config

    overrides = parse_overrides(items)
    preset = overrides.pop("preset", None)
    cfg = resolve(preset, overrides)
    _values, base = preset_base(preset)
    config = normalise(cfg.to_dict(), base)
    cid = make_cell_id(preset or "custom", config, base)
    # bookkeeping keys are not part of the id, but the run uses the values given
    config.update({key: getattr(cfg, key) for key in BOOKKEEPING_KEYS})
    return check_run_config(config), cid


def check_cell_id(cell_id: str) -> str:
    """A --cell-id stays inside results/cells and checkpoints (no '..', absolute path or '_' start)."""
    for part in cell_id.replace("\\", "/").split("/"):
        if part in ("", "."):
            raise ConfigError(f"--cell-id {cell_id!r} has an empty or '.' component; use e.g. preset/variant/seed1")
    return check_path_name(cell_id, "--cell-id")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.list_keys:
        from ..config.keydoc import render_markdown, render_text

        print(render_markdown() if args.markdown else render_text(), end="")
        return 0
    try:
        cfg, cid = resolve_cell(args.overrides)
        if args.cell_id is not None:
            check_cell_id(args.cell_id)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        import json

        print(json.dumps({"cell": args.cell_id or cid, "config": cfg.to_dict()}, indent=2))
        return 0
    from ..optim.structures import StructureTooLarge
    from ..train.checkpoint import NoIntactCheckpoint
    from ..train.lock import CellLocked
    from ..train.loop import PREEMPTED_EXIT_CODE, Preempted, run

    command = shlex.join(["python", "-m", "llqr.train", *argv])
    try:
        summary = run(
            cfg,
            cell_id=args.cell_id or cid,
            results_dir=args.results_dir,
            checkpoints_dir=args.checkpoints_dir,
            data_root=args.data_root,
            command=command,
            prepare_missing=True,
            take_over_lock=args.take_over_lock,
        )
    except ModelNotAvailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 4
    except StructureTooLarge as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except Preempted as exc:
        print(str(exc), file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    except CellLocked as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 6
    except NoIntactCheckpoint as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 5
    if summary["status"] == "failed-data":
        print(f"data error: {summary['message']}", file=sys.stderr)
        return 3
    return 0

