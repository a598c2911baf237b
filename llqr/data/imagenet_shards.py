"""The packed ImageNet format: names, the manifest, checks, and staging to node-local scratch.

A packed directory holds, per split (``train``, ``val``):

- ``{split}-00000.tar``, ``{split}-00001.tar``, ...: plain uncompressed tar files of the original
  JPEG bytes, members named ``{split}/<wnid>/<file name>``;
- ``{split}-index.npy``: one row per image, in example order, with the shard number, the byte
  offset of the member's data in that shard, its length, and the class index (``INDEX_DTYPE``);

and a ``manifest.json`` (written last) with the format version, counts, the sorted class list
(wnids), and the name, size and SHA-256 of every shard and index file.

Why this format: a reader gets image ``i`` with one ``os.pread(fd, length, offset)``, so the
BatchStream's random batches need no unpacking, no per-image files (1.3M small files are slow on
cluster filesystems) and no extra dependency; the shards stay ordinary archives that ``tar tf``
lists and ``tar xf`` unpacks; a few hundred large files copy to node-local disk at full bandwidth.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from . import paths
from .errors import DataError
from .fetch import file_digest

FORMAT = "llqr-imagenet-shards"
VERSION = 1
MANIFEST = paths.IMAGENET_MANIFEST  # written last (llqr.data.paths, shared with rule pack_imagenet)
SPLITS = ("train", "val")
INDEX_DTYPE = np.dtype([("shard", "<u4"), ("offset", "<u8"), ("length", "<u4"), ("label", "<i4")])
REBUILD = ("rebuild it with `snakemake --cores 4 --forcerun pack_imagenet {dir}/" + MANIFEST + "` or "
           "`python -m llqr.data.prepare imagenet <source> {dir}`")


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:05d}.tar"


def index_name(split: str) -> str:
    return f"{split}-index.npy"


def manifest_files(manifest: dict) -> list[dict]:
    """Every data file of a manifest (shards and index files): dicts with name, size, sha256."""
    files = []
    for split in SPLITS:
        info = manifest["splits"][split]
        files.extend(info["shards"])
        files.append(info["index"])
    return files


def resolve_dir(directory) -> Path:
    """The folder holding ``manifest.json``: ``directory`` itself or its ``shards/`` subfolder."""
    directory = Path(directory)
    for candidate in (directory, paths.imagenet_shards(directory)):
        if (candidate / MANIFEST).is_file():
            return candidate
    manifest = paths.imagenet_manifest(directory)
    raise DataError(
        f"no packed ImageNet in {directory}: expected {manifest} (or {directory / MANIFEST}) "
        f"with its train-*.tar/val-*.tar shards. Pack your ImageNet files once with `snakemake --cores 4 "
        f"{manifest}` (source: data_sources.imagenet.source_dir or $IMAGENET_DIR) or "
        f"`python -m llqr.data.prepare imagenet <source> {paths.imagenet_shards(directory)}`")


def read_manifest(shard_dir) -> dict:
    path = Path(shard_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; " + REBUILD.format(dir=shard_dir)) from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is unreadable ({exc}); " + REBUILD.format(dir=shard_dir)) from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise DataError(f"{path} is not a version-{VERSION} {FORMAT} manifest (found format "
                        f"{manifest.get('format')!r}, version {manifest.get('version')!r}); "
                        + REBUILD.format(dir=shard_dir))
    return manifest


def check(shard_dir, hashes: bool = False) -> dict:
    """Check that every file of the manifest is present with its recorded size (and SHA-256 if ``hashes``);
    return the manifest. A missing or partial file raises DataError naming it and how to rebuild."""
    shard_dir = Path(shard_dir)
    manifest = read_manifest(shard_dir)
    problems = []
    for f in manifest_files(manifest):
        path = shard_dir / f["name"]
        if not path.is_file():
            problems.append(f"{f['name']} is missing")
            continue
        size = path.stat().st_size
        if size != f["size"]:
            problems.append(f"{f['name']} has {size} bytes, the manifest says {f['size']} (truncated or replaced)")
        elif hashes and file_digest(path, "sha256") != f["sha256"]:
            problems.append(f"{f['name']} has the wrong SHA-256 (corrupt)")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise DataError(f"packed ImageNet in {shard_dir} is incomplete: {shown}; " + REBUILD.format(dir=shard_dir))
    return manifest


def load_index(shard_dir, manifest: dict, split: str) -> np.ndarray:
    """The index of ``split``, checked against the manifest (row count, shard numbers, byte ranges)."""
    shard_dir = Path(shard_dir)
    info = manifest["splits"][split]
    path = shard_dir / info["index"]["name"]
    try:
        index = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is unreadable ({exc}); " + REBUILD.format(dir=shard_dir)) from None
    sizes = np.array([s["size"] for s in info["shards"]], np.uint64)
    ok = index.dtype == INDEX_DTYPE and index.ndim == 1 and len(index) == info["count"]
    if ok and len(index):
        ok = bool(index["shard"].max() < len(sizes)
                  and np.all(index["offset"] + index["length"] <= sizes[index["shard"]])
                  and index["label"].min() >= 0 and index["label"].max() < manifest["num_classes"])
    if not ok:
        raise DataError(f"{path} does not match {MANIFEST} (rows, shard numbers, byte ranges or labels); "
                        + REBUILD.format(dir=shard_dir))
    return index


def default_scratch(shard_dir=None) -> Path | None:
    """Node-local scratch: ``$SLURM_TMPDIR``, else ``$TMPDIR`` unless it is on the same filesystem as
    ``shard_dir`` (a workstation's /tmp: copying would only double the disk use), else None (read in place)."""
    slurm = os.environ.get("SLURM_TMPDIR")
    if slurm and Path(slurm).is_dir():
        return Path(slurm)
    tmp = os.environ.get("TMPDIR")
    if tmp and Path(tmp).is_dir():
        if shard_dir is None or os.stat(tmp).st_dev != os.stat(shard_dir).st_dev:
            return Path(tmp)
    return None


def _copy(src: Path, dest: Path, size: int, sha256: str | None) -> None:
    """Copy to a temporary name beside ``dest``, check size (and hash), then rename into place."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".partial")
    os.close(fd)
    tmp = Path(tmp)
    try:
        if sha256 is None:
            shutil.copyfile(src, tmp)
        else:
            h = hashlib.sha256()
            with open(src, "rb") as fin, open(tmp, "wb") as fout:
                while block := fin.read(1 << 22):
                    h.update(block)
                    fout.write(block)
            if h.hexdigest() != sha256:
                raise DataError(f"{src} has the wrong SHA-256 (corrupt); " + REBUILD.format(dir=src.parent))
        if tmp.stat().st_size != size:
            raise OSError(f"copy of {src} has {tmp.stat().st_size} bytes, expected {size}")
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def stage(shard_dir, scratch=None, verify: str = "size", log=print) -> Path:
    """Copy the packed files to node-local scratch and return the folder to read from.

    ``scratch`` defaults to ``$SLURM_TMPDIR``, else ``$TMPDIR`` (if on another filesystem than the shards);
    with neither, or too little free space, or a failed copy, the shards are read in place (the returned
    folder is ``shard_dir``). The copy goes to ``<scratch>/llqr-imagenet-<manifest hash>/``. Files already
    staged with the right size (a resumed job on the same node) are kept. ``verify="sha256"`` also hashes
    every copied file against the manifest (slower: one extra pass of CPU over the data).
    """
    shard_dir = resolve_dir(shard_dir)
    manifest = check(shard_dir)
    scratch = Path(scratch) if scratch else default_scratch(shard_dir)
    if scratch is None:
        log(f"[imagenet] no node-local scratch ($SLURM_TMPDIR, $TMPDIR): reading the shards in place from {shard_dir}")
        return shard_dir
    key = hashlib.sha256((shard_dir / MANIFEST).read_bytes()).hexdigest()[:12]
    target = scratch / f"llqr-imagenet-{key}"
    if target.resolve() == shard_dir.resolve():
        return shard_dir
    files = manifest_files(manifest)
    todo = [f for f in files
            if not ((target / f["name"]).is_file() and (target / f["name"]).stat().st_size == f["size"])]
    need = sum(f["size"] for f in todo)
    if todo:
        target.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(target).free
        if free < need + (256 << 20):
            log(f"[imagenet] only {free / 2**30:.1f} GiB free in {scratch}, staging needs {need / 2**30:.1f} GiB: "
                f"reading the shards in place from {shard_dir}")
            return shard_dir
        t0, done = time.time(), 0
        log(f"[imagenet] staging {len(todo)} files ({need / 2**30:.2f} GiB) from {shard_dir} to {target}"
            + (f" ({len(files) - len(todo)} already there)" if len(todo) < len(files) else ""))
        for f in todo:
            try:
                _copy(shard_dir / f["name"], target / f["name"], f["size"], f["sha256"] if verify == "sha256" else None)
            except OSError as exc:
                log(f"[imagenet] staging failed ({exc}): reading the shards in place from {shard_dir}")
                return shard_dir
            done += f["size"]
        dt = max(time.time() - t0, 1e-9)
        log(f"[imagenet] staged {done / 2**30:.2f} GiB in {dt:.1f} s ({done / 2**20 / dt:.0f} MiB/s)")
    staged_manifest = target / MANIFEST
    if not staged_manifest.is_file() or staged_manifest.read_bytes() != (shard_dir / MANIFEST).read_bytes():
        _copy(shard_dir / MANIFEST, staged_manifest, (shard_dir / MANIFEST).stat().st_size, None)
    return target
