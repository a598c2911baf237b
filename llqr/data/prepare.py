"""``python -m llqr.data.prepare <dataset> <out_path>``: one-time dataset preparation."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m llqr.data.prepare digits data/digits/digits.npz", file=sys.stderr)
        return 2
    name, out = argv
    if name != "digits":
        print(f"error: no preparation step for dataset '{name}' (available: digits)", file=sys.stderr)
        return 2
    from . import digits

    counts = digits.prepare(Path(out))
    print(json.dumps({"dataset": name, "path": out, **counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
