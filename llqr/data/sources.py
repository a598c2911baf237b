"""Official downloads of the datasets the config's ``data_sources`` cannot describe: one entry there
names one file and one checksum, and SVHN has a file per split (each with its own md5), Cora eight;
ImageWoof's archive has only fastai's check (size and md5 of the first MiB).

Pure Python (the Snakefile imports it). ``data_sources.svhn`` may still redirect the fetch: ``url``
is then a base address the file names are appended to, ``local`` a folder holding both files.
"""

from __future__ import annotations

from pathlib import Path

from . import paths

SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"  # the dataset's home, where torchvision downloads it
# The md5s torchvision checks the downloaded files against (datasets/svhn.py, split_list).
SVHN_MD5 = {"train": "e26dedcc434d2e4c54c9b2d4a06d8373", "test": "eb5a983be6a315427106f1b164d9cef3"}


def _file_source(name: str, base_url: str, digest: dict, override: dict | None) -> dict:
    """A fetch source for file ``name`` of a dataset published as separate files under ``base_url``:
    config ``data_sources.<dataset>`` may give another base address (url) or a folder holding the
    files (local)."""
    override = override or {}
    local = override.get("local")
    return {"url": (override.get("url") or base_url).rstrip("/") + "/" + name, **digest,
            "local": str(Path(local) / name) if local else None}


def svhn_source(split: str, override: dict | None = None) -> dict:
    """What rule fetch_svhn hands llqr.data.fetch.fetch for SVHN's ``split`` file: url, md5 and
    local copy, the official ones unless ``override`` (config ``data_sources.svhn``) moves them."""
    if split not in SVHN_MD5:
        raise ValueError(f"SVHN has no split {split!r} here (only {', '.join(SVHN_MD5)})")
    return _file_source(paths.SVHN_FILE.format(split=split), SVHN_URL, {"md5": SVHN_MD5[split]}, override)


# Cora as PyTorch Geometric's Planetoid downloads it: the Planetoid repository's data folder (Yang,
# Cohen & Salakhutdinov 2016). No official checksums exist; these sha256s are of those files as a
# public test suite pins them (THUDM GRAND reproduction, "cora_raw_sha256").
CORA_URL = "https://github.com/kimiyoung/planetoid/raw/master/data/"
CORA_SHA256 = {
    "x": "23cfa55d91c6f624233f5eb7b6e3f141f1bd2b2ae39608a63cf5d084bb27baab",
    "y": "94465c14eb53e04ca262198dcbb2521ee8af60fb3f3d546cd6ca24a511b0e7d1",
    "tx": "b9afbaa4a400df991f6f02ef677e1e44da55ffc04801fd02f9e673987829226a",
    "ty": "41f5ac76596a1699cc33f53084a2419e92961c42bb75f36fc38e616d348532ad",
    "allx": "9419ba2f26f5c35243db64aba110e0f35a04851609e0dc5433450676ca6b8543",
    "ally": "2b998f5cc7fedc86e7f97ca2498f47a1ffc1462c29e2d578b23bf3f62b6e7d71",
    "graph": "58f13302f39dde8852dad6fe6d15b89b077b6d7f837626bce671ef80344b383d",
    "test.index": "297ce89af2b51a6a194181c7dbe1796c6a1cf9cd9349a88383b1b1e227867875",
}


def cora_source(part: str, override: dict | None = None) -> dict:
    """What rule fetch_cora hands llqr.data.fetch.fetch for Cora's ``part`` file: url, sha256 and
    local copy; ``override`` (config ``data_sources.cora``) may move them (url: a base address the
    file names are appended to, local: a folder holding the eight files)."""
    if part not in CORA_SHA256:
        raise ValueError(f"Cora has no file part {part!r} here (only {', '.join(CORA_SHA256)})")
    return _file_source(paths.CORA_FILE.format(part=part), CORA_URL, {"sha256": CORA_SHA256[part]}, override)


# ImageWoof-10, fastai's full-size imagewoof2 (the loader decodes it once). The only published check
# is fastai's (fastai/data/checks.txt): the size and the md5 of the first MiB; whole-file md5s found in
# third-party code disagree with each other, so none is used.
IMAGEWOOF_URL = "https://s3.amazonaws.com/fast-ai-imageclas/imagewoof2.tgz"
IMAGEWOOF_SIZE = 1_343_715_595
IMAGEWOOF_MD5_FIRST_MIB = "2cc1c1e36e20cb6fd24ffb978edcb487"


def imagewoof_source(override: dict | None = None) -> dict:
    """What rule fetch_imagewoof hands llqr.data.fetch.fetch: url, fastai's size and first-MiB md5, and a
    local copy; ``override`` (config ``data_sources.imagewoof``: url, local file) may move them."""
    override = override or {}
    return {"url": override.get("url") or IMAGEWOOF_URL, "size": IMAGEWOOF_SIZE,
            "md5_first_mib": IMAGEWOOF_MD5_FIRST_MIB, "local": override.get("local")}
