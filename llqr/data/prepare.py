"""One-time dataset preparation.

    python -m llqr.data.prepare digits data/digits/digits.npz
    python -m llqr.data.prepare imagenet <source> data/imagenet/shards [--shard-size-mb 1024]

``imagenet`` packs the official archives (``ILSVRC2012_img_{train,val}.tar`` + validation labels) or a
``train/<wnid>/`` + ``val/<wnid>/`` class-folder tree in ``<source>`` into tar shards (see
llqr/data/imagenet_pack.py); ``llqr.data.load_dataset`` then reads ``data/imagenet/shards``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

USAGE = ("usage: python -m llqr.data.prepare digits data/digits/digits.npz\n"
         "       python -m llqr.data.prepare imagenet <source> <out_dir> [--shard-size-mb N]")


def _imagenet(args: list[str]) -> int:
    shard_mb = None
    if "--shard-size-mb" in args:
        i = args.index("--shard-size-mb")
        try:
            shard_mb = float(args[i + 1])
        except (IndexError, ValueError):
            print(USAGE, file=sys.stderr)
            return 2
        args = args[:i] + args[i + 2:]
    if len(args) != 2:
        print(USAGE, file=sys.stderr)
        return 2
    from .errors import DataError
    from .imagenet_pack import DEFAULT_SHARD_MB, pack

    try:
        manifest = pack(args[0], Path(args[1]), shard_size_mb=shard_mb or DEFAULT_SHARD_MB)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"dataset": "imagenet", "path": args[1], **manifest["counts"],
                      "classes": manifest["num_classes"]}))
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "imagenet":
        return _imagenet(list(argv[1:]))
    if len(argv) != 2:
        print(USAGE, file=sys.stderr)
        return 2
    name, out = argv
    if name != "digits":
        print(f"error: no preparation step for dataset '{name}' (available: digits, imagenet)", file=sys.stderr)
        return 2
    from . import digits

    counts = digits.prepare(Path(out))
    print(json.dumps({"dataset": name, "path": out, **counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
