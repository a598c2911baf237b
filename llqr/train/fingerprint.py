"""What a cell's result depends on besides its config: digests of the input files it reads.

A checkpoint is keyed by the config *and* this fingerprint (``attempt_key``), so a job whose
data changed (re-prepared, NaN-poisoned, another BPE merge count) or whose study's best.json
changed never resumes from a state trained on the old inputs. Files are named by base name (or
by path relative to a dataset folder), never by full path: moving ``data_dir`` keeps the key.
The workflow and ``python -m llqr.train`` compute it the same way, from the data the run loads.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..config.hashing import canonical_json, config_hash
from ..data import NUMERIC_CACHE, TRANSLATION_ARCHIVE, dataset_dir
from ..data.fetch import file_digest


def path_digests(path: Path) -> dict[str, str]:
    """{name: sha256} of a file, or of every file under a folder (names relative to its parent)."""
    path = Path(path)
    if path.is_dir():
        return {str(p.relative_to(path.parent)): file_digest(p, "sha256")
                for p in sorted(path.rglob("*")) if p.is_file()}
    return {path.name: file_digest(path, "sha256")}


def dataset_files(cfg, data, data_root) -> list[Path]:
    """The files a loaded dataset was read from: ImageNet's manifest (it names every shard's digest;
    hashing 145 GB per job is not an option), the translation archive and numeric cache index, else
    the array file or archive the loader opened (``data.path``)."""
    if cfg.dataset in ("imagenet", "imagenet100"):
        return [Path(data.path) / "manifest.json"]
    if cfg.dataset == "imagewoof":  # its meta.json names the decoded arrays' digests
        return [Path(data.path) / "meta.json"]
    if getattr(data, "task", "classification") == "translation":
        root = dataset_dir(cfg, data_root)
        return [root / TRANSLATION_ARCHIVE, root / NUMERIC_CACHE / "metadata.json"]
    return [Path(data.path)]


def fingerprint(paths) -> dict:
    """{"files": {name: sha256}, "sha256": digest of them all} over ``paths`` (files or folders)."""
    files: dict[str, str] = {}
    for path in paths:
        files.update(path_digests(path))
    return {"files": files, "sha256": hashlib.sha256(canonical_json(files).encode()).hexdigest()}


def attempt_key(identity_config: dict, inputs: dict) -> str:
    """The checkpoint folder of an attempt: changes whenever the config or an input does."""
    return config_hash({"config": identity_config, "inputs": inputs["sha256"]})
