"""Pack the user's ImageNet 2012 files once into large tar shards with an index (format: imagenet_shards).

One pass reads either input layout (the official archives, or ``train/<wnid>/`` + ``val/<wnid>/``
class folders) and writes the original JPEG bytes, unchanged, into ``{split}-NNNNN.tar`` shards of
about ``shard_size_mb`` each, recording where each image's bytes start and how long they are.
Order is deterministic and the same for both layouts: training images by (wnid, file name), validation
images by (file name, wnid). Tar headers carry no time stamps or owners, so packing the same images
twice, from either layout, gives byte-identical shards.

Nothing half-done is ever visible as complete: an old ``manifest.json`` is removed first, each shard
is written under a temporary name and renamed when closed, the index files are written atomically, and
the manifest (the output Snakemake waits for) comes last. A reader thread overlaps reading the inputs
with writing and hashing the shards.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import queue
import re
import shutil
import tarfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ..atomic import write_atomic, write_text
from .errors import DataError
from .fetch import file_digest
from .imagenet_index import ARCHIVES, index, read_val_labels, val_number
from .imagenet_shards import FORMAT, INDEX_DTYPE, MANIFEST, SPLITS, VERSION, index_name, shard_name

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
DEFAULT_SHARD_MB = 1024
PROGRESS_EVERY = 10_000
_BLOCK = 512


class _HashingFile:
    """A write-only file that hashes what passes through it and knows its position (for tarfile)."""

    def __init__(self, path: Path):
        self._fh = open(path, "wb")
        self._hash = hashlib.sha256()
        self._pos = 0

    def write(self, data) -> int:
        self._hash.update(data)
        n = self._fh.write(data)
        self._pos += n
        return n

    def tell(self) -> int:
        return self._pos

    def finish(self) -> str:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        return self._hash.hexdigest()


class _ShardWriter:
    """Appends images to ``{split}-NNNNN.tar`` shards, starting a new one past ``limit`` bytes."""

    def __init__(self, out_dir: Path, split: str, limit: int):
        self.out_dir, self.split, self.limit = out_dir, split, limit
        self.shards: list[dict] = []
        self._file = self._tar = None
        self._count = 0

    def _open(self) -> None:
        name = shard_name(self.split, len(self.shards))
        self._tmp = self.out_dir / f".{name}.partial"
        self._file = _HashingFile(self._tmp)
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT)
        self._count = 0

    def _close(self) -> None:
        self._tar.close()
        digest = self._file.finish()
        name = shard_name(self.split, len(self.shards))
        os.replace(self._tmp, self.out_dir / name)
        self.shards.append({"name": name, "size": (self.out_dir / name).stat().st_size, "sha256": digest,
                            "count": self._count})
        self._file = self._tar = None

    def add(self, member: str, data: bytes) -> tuple[int, int, int]:
        """Write one image; return (shard number, byte offset of its data, length)."""
        padded = -(-len(data) // _BLOCK) * _BLOCK
        if self._file is not None and self._count and self._file.tell() + _BLOCK + padded > self.limit:
            self._close()
        if self._file is None:
            self._open()
        info = tarfile.TarInfo(member)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        self._tar.addfile(info, io.BytesIO(data))
        self._count += 1
        return len(self.shards), self._file.tell() - padded, len(data)

    def finish(self) -> list[dict]:
        if self._file is not None:
            self._close()
        return self.shards

    def abort(self) -> None:
        if self._file is not None:
            self._file._fh.close()
            self._tmp.unlink(missing_ok=True)


# --- the two input layouts: (classes, train items, val items); items are (wnid, file name, read) -------
Item = tuple[str, str, Callable[[], bytes]]


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _folder_source(root: Path) -> tuple[list[str], Iterator[Item], Iterator[Item]]:
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())

    def files(folder: Path) -> list[str]:
        return sorted(e.name for e in os.scandir(folder) if e.is_file() and _is_image(e.name))

    def reader(path: Path) -> Callable[[], bytes]:
        return path.read_bytes

    def train() -> Iterator[Item]:
        for wnid in classes:
            names = files(root / "train" / wnid)
            if not names:
                raise DataError(f"{root / 'train' / wnid} holds no images (.JPEG/.jpg/.png)")
            for name in names:
                yield wnid, name, reader(root / "train" / wnid / name)

    def val() -> Iterator[Item]:
        entries = sorted((name, wnid) for wnid in classes for name in files(root / "val" / wnid))
        if not entries:
            raise DataError(f"{root / 'val'} holds no images")
        for name, wnid in entries:
            yield wnid, name, reader(root / "val" / wnid / name)

    return classes, train(), val()


def _archive_source(root: Path, stack: list) -> tuple[list[str], Iterator[Item], Iterator[Item]]:
    train_path, val_path = (root / a for a in ARCHIVES)
    labels = read_val_labels(root)

    def open_tar(path, fileobj=None):
        try:
            return tarfile.open(path, "r:", fileobj=fileobj)
        except (tarfile.TarError, OSError) as exc:
            raise DataError(f"{path} is not a readable (uncompressed) tar ({exc}); is it the official file, "
                            "complete? Fetch it again") from None

    outer = open_tar(train_path)
    stack.append(outer)
    try:
        class_tars = {Path(m.name).name[:-4]: m for m in outer.getmembers() if m.isfile() and m.name.endswith(".tar")}
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{train_path} is truncated or corrupt ({exc}); fetch it again") from None
    if not class_tars:
        raise DataError(f"{train_path} holds no per-class nXXXXXXXX.tar files; is it ILSVRC2012_img_train.tar?")
    classes = sorted(class_tars)
    unknown = sorted(set(labels.values()) - set(classes))
    if unknown:
        raise DataError(f"validation labels name classes with no training images (e.g. {unknown[:5]})")

    def read_member(tar, member, where):
        def read() -> bytes:
            try:
                return tar.extractfile(member).read()
            except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
                raise DataError(f"{where}: cannot read {member.name} ({exc}); the archive is truncated or "
                                "corrupt: fetch it again") from None
        return read

    def train() -> Iterator[Item]:
        for wnid in classes:
            inner = open_tar(f"{train_path}:{class_tars[wnid].name}", outer.extractfile(class_tars[wnid]))
            try:
                members = sorted((m for m in inner.getmembers() if m.isfile()), key=lambda m: Path(m.name).name)
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise DataError(f"{train_path}:{class_tars[wnid].name} is truncated or corrupt ({exc})") from None
            if not members:
                raise DataError(f"{train_path}:{class_tars[wnid].name} holds no images")
            for m in members:
                yield wnid, Path(m.name).name, read_member(inner, m, f"{train_path}:{class_tars[wnid].name}")

    def val() -> Iterator[Item]:
        tar = open_tar(val_path)
        stack.append(tar)
        try:
            members = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: Path(m.name).name)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"{val_path} is truncated or corrupt ({exc}); fetch it again") from None
        numbers = [val_number(m.name) for m in members]
        odd = [m.name for m, n in zip(members, numbers) if n is None]
        if odd:
            raise DataError(f"{val_path} holds files not named ILSVRC2012_val_NNNNNNNN.JPEG (e.g. {odd[:3]})")
        unlabelled = [m.name for m, n in zip(members, numbers) if n not in labels]
        if unlabelled:
            raise DataError(f"the validation labels have no entry for {len(unlabelled)} images of {val_path} "
                            f"(e.g. {unlabelled[:3]}); are they the labels of this archive?")
        if len(labels) != len(members):
            raise DataError(f"the validation labels list {len(labels)} images but {val_path} holds {len(members)}; "
                            "is the archive complete?")
        for m, n in zip(members, numbers):
            yield labels[n], Path(m.name).name, read_member(tar, m, str(val_path))

    return classes, train(), val()


def _prefetched(items: Iterator[Item], depth: int = 64) -> Iterator[tuple[str, str, bytes]]:
    """Read the items' bytes in a background thread (I/O overlaps with writing and hashing)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def run():
        try:
            for wnid, name, read in items:
                data = read()
                while not stop.is_set():
                    try:
                        q.put((wnid, name, data), timeout=0.5)
                        break
                    except queue.Full:
                        pass
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as exc:  # handed to the consumer
            q.put(exc)

    thread = threading.Thread(target=run, name="pack-imagenet-reader", daemon=True)
    thread.start()
    try:
        while True:
            got = q.get()
            if got is done:
                return
            if isinstance(got, BaseException):
                raise got
            yield got
    finally:
        stop.set()
        thread.join(timeout=5)


def _only(items: Iterator[Item], subset: set) -> Iterator[Item]:
    """The items of the ``subset`` classes (their bytes are read only when kept)."""
    return (item for item in items if item[0] in subset)


def _check_image(data: bytes, where: str) -> None:
    """Parse the image header (no decoding): catches files that are not images at all."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{where} is not a readable image ({exc})") from None
    if w <= 0 or h <= 0:
        raise DataError(f"{where} has an empty image")


def pack(source, out_dir, shard_size_mb: float = DEFAULT_SHARD_MB, progress_every: int = PROGRESS_EVERY,
         log=print, classes=None) -> dict:
    """Pack the ImageNet files in ``source`` (either layout) into shards in ``out_dir``; return the manifest.
    ``classes`` (WordNet ids, e.g. ``imagenet100.CLASSES``) packs only their images, labelled by rank in
    sorted order; every one of them must be in ``source``."""
    info = index(str(source))
    root, out_dir = Path(info["root"]), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)  # never leave an old manifest beside shards being rewritten
    for stale in out_dir.glob(".*.partial"):  # shards of a killed earlier run
        stale.unlink()
    if info["layout"] == "archives":
        need = sum(info["files"][a] for a in ARCHIVES)
        free = shutil.disk_usage(out_dir).free
        if free < need:
            raise DataError(f"packing needs about {need / 2**30:.1f} GiB in {out_dir}, "
                            f"only {free / 2**30:.1f} GiB are free")
    limit = max(int(shard_size_mb * 2**20), 4 * _BLOCK)
    subset = None if classes is None else set(classes)
    stack: list = []
    t0 = time.time()
    try:
        if info["layout"] == "folders":
            classes, train_items, val_items = _folder_source(root)
        else:
            classes, train_items, val_items = _archive_source(root, stack)
        if subset is not None:
            missing = sorted(subset - set(classes))
            if missing:
                raise DataError(f"{root} lacks {len(missing)} of the {len(subset)} requested classes "
                                f"(e.g. {missing[:5]}): is it the full ImageNet 2012?")
            classes = sorted(subset)
            train_items, val_items = (_only(items, subset) for items in (train_items, val_items))
        label_of = {w: i for i, w in enumerate(classes)}
        log(f"[pack_imagenet] {info['layout']} in {root}: {len(classes)} classes -> {out_dir} "
            f"(shards of ~{shard_size_mb:g} MiB)")
        splits = {}
        total = 0
        for split, items in zip(SPLITS, (train_items, val_items)):
            writer = _ShardWriter(out_dir, split, limit)
            rows = []
            try:
                for wnid, name, data in _prefetched(items):
                    member = f"{split}/{wnid}/{name}"
                    if not data:
                        raise DataError(f"{member} in {root} is empty")
                    _check_image(data, f"{member} in {root}")
                    shard, offset, length = writer.add(member, data)
                    rows.append((shard, offset, length, label_of[wnid]))
                    total += 1
                    if total % progress_every == 0:
                        dt = max(time.time() - t0, 1e-9)
                        log(f"[pack_imagenet] {split}: {len(rows)} images (class {label_of[wnid] + 1}/{len(classes)}), "
                            f"{len(writer.shards) + 1} shards, {total / dt:.0f} images/s")
                shards = writer.finish()
            except BaseException:
                writer.abort()
                raise
            table = np.array(rows, dtype=INDEX_DTYPE)
            path = out_dir / index_name(split)
            write_atomic(path, lambda tmp, t=table: _save_npy(tmp, t))
            splits[split] = {
                "count": len(rows),
                "shards": shards,
                "index": {"name": path.name, "size": path.stat().st_size, "sha256": file_digest(path, "sha256")},
            }
            log(f"[pack_imagenet] {split}: {len(rows)} images in {len(shards)} shards "
                f"({sum(s['size'] for s in shards) / 2**30:.2f} GiB)")
    finally:
        for tar in stack:
            tar.close()
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "num_classes": len(classes),
        "classes": classes,
        "counts": {s: splits[s]["count"] for s in SPLITS},
        "splits": splits,
        "source": {"layout": info["layout"], "root": str(root)},
        "shard_size_mb": shard_size_mb,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _remove_stale_shards(out_dir, manifest)
    write_text(out_dir / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    log(f"[pack_imagenet] done in {time.time() - t0:.0f} s: {out_dir / MANIFEST}")
    return manifest


def _save_npy(path: Path, table: np.ndarray) -> None:
    with open(path, "wb") as fh:  # a handle, so numpy keeps the temporary name as it is
        np.save(fh, table, allow_pickle=False)


def _remove_stale_shards(out_dir: Path, manifest: dict) -> None:
    """Delete shards of an earlier, larger pack that this manifest does not list."""
    keep = {s["name"] for split in SPLITS for s in manifest["splits"][split]["shards"]}
    pattern = re.compile(r"(train|val)-\d{5}\.tar")
    for path in out_dir.iterdir():
        if pattern.fullmatch(path.name) and path.name not in keep:
            path.unlink()
