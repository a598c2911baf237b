"""Record the golden cells' outputs into tests/golden/expected.json.

    python tests/golden/record.py            # all cells
    python tests/golden/record.py svag bf16  # only these labels (the others keep their recording)

Record only on purpose: the file is what a refactor of the runner must reproduce.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # tests/ (fixtures, golden), not this folder

import xla_test_flags  # noqa: E402

xla_test_flags.apply()  # record what the test suite computes
from golden.golden import EXPECTED, golden_cells, machine, prepare_data, run_cell  # noqa: E402


def main(labels: list[str]) -> None:
    cells = golden_cells()
    unknown = set(labels) - set(cells)
    if unknown:
        raise SystemExit(f"unknown golden labels {sorted(unknown)}; known: {', '.join(cells)}")
    expected = json.loads(EXPECTED.read_text()) if EXPECTED.exists() and labels else {"cells": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data_root = prepare_data(root)
        for label, cell in cells.items():
            if labels and label not in labels:
                continue
            print(f"recording {label}: {cell.id}", flush=True)
            expected["cells"][label] = run_cell(label, cell, root / label, data_root)
    expected["machine"] = machine()
    EXPECTED.write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    print(f"wrote {EXPECTED}")


if __name__ == "__main__":
    main(sys.argv[1:])
