"""Render one surface by hand, e.g. from a partial run:

    python -m llqr.report --surface-json surface.json --results-dir results --out-dir /tmp/demo

The surface JSON is what ``llqr.workflow.matrix.Surface.to_dict()`` returns.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .render import render_surface


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llqr.report", description=__doc__.splitlines()[0])
    parser.add_argument("--surface-json", required=True, type=Path, help="file with the surface as JSON")
    parser.add_argument("--results-dir", default="results", type=Path, help="holds cells/<cell id>/")
    parser.add_argument("--out-dir", required=True, type=Path, help="where the tables and figure go")
    args = parser.parse_args(argv)
    surface = json.loads(args.surface_json.read_text(encoding="utf-8"))
    for name, path in render_surface(surface, args.results_dir, args.out_dir).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
