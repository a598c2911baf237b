"""Snakemake ``script:`` body: render one surface's tables, figure and seed list."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)

from llqr.report import OUTPUTS, render_surface  # noqa: E402

params, out = snakemake.params, snakemake.output  # noqa: F821
written = render_surface(json.loads(params.surface), params.results_dir, Path(out.csv).parent)
for name in OUTPUTS:
    expected = Path(getattr(out, name))
    if Path(written[name]).resolve() != expected.resolve() or not expected.is_file():
        raise RuntimeError(f"aggregate_surface: output {name} not written to {expected}")
