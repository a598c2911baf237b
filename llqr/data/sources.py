"""Official downloads of the datasets the config's ``data_sources`` cannot describe: one entry there
names one file and one checksum, and SVHN has a file per split, each with its own md5.

Pure Python (the Snakefile imports it). ``data_sources.svhn`` may still redirect the fetch: ``url``
is then a base address the file names are appended to, ``local`` a folder holding both files.
"""

from __future__ import annotations

from pathlib import Path

from . import paths

SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"  # the dataset's home, where torchvision downloads it
# The md5s torchvision checks the downloaded files against (datasets/svhn.py, split_list).
SVHN_MD5 = {"train": "e26dedcc434d2e4c54c9b2d4a06d8373", "test": "eb5a983be6a315427106f1b164d9cef3"}


def svhn_source(split: str, override: dict | None = None) -> dict:
    """What rule fetch_svhn hands llqr.data.fetch.fetch for SVHN's ``split`` file: url, md5 and
    local copy, the official ones unless ``override`` (config ``data_sources.svhn``) moves them."""
    if split not in SVHN_MD5:
        raise ValueError(f"SVHN has no split {split!r} here (only {', '.join(SVHN_MD5)})")
    override = override or {}
    name = paths.SVHN_FILE.format(split=split)
    base = override.get("url") or SVHN_URL
    local = override.get("local")
    return {"url": base.rstrip("/") + "/" + name, "md5": SVHN_MD5[split],
            "local": str(Path(local) / name) if local else None}
