"""Snakemake ``script:`` body: render one surface's tables, figure and seed list.

Failed or missing cells (any status but ok and diverged) fail the job with one line per cell,
unless ``allow_missing`` is set; then they are listed in the log and the tables mark them.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from llqr.report import OUTPUTS, completeness_error, failed_cells, render_surface

params, out = snakemake.params, snakemake.output
surface = json.loads(params.surface)
failed = failed_cells(surface, params.results_dir)
if failed and not params.allow_missing:
    sys.exit(completeness_error(surface["name"], failed))
if failed:
    print(f"surface {surface['name']}: rendering without {len(failed)} cell(s):\n" + "\n".join(failed), file=sys.stderr)
written = render_surface(surface, params.results_dir, Path(out.csv).parent)
for name in OUTPUTS:
    expected = Path(getattr(out, name))
    if Path(written[name]).resolve() != expected.resolve() or not expected.is_file():
        raise RuntimeError(f"aggregate_surface: output {name} not written to {expected}")
