"""Fetch a raw dataset archive once, verify its checksum, and explain what to do offline."""

from __future__ import annotations

import hashlib
import shutil
import urllib.request
from pathlib import Path

from ..atomic import write_atomic
from .errors import DataError


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def head_md5(path: Path, size: int = 1 << 20) -> str:
    """md5 of the first ``size`` bytes: the digest fastai's download checks record (with the size)."""
    with open(path, "rb") as fh:
        return hashlib.md5(fh.read(size)).hexdigest()


def verify(path: Path, checksums: dict, label=None) -> None:
    """Check ``path`` against the configured digests (``sha256``, ``md5``; ``size`` in bytes and
    ``md5_first_mib`` where only fastai's checks exist); errors name ``label`` (default: the path)."""
    size = checksums.get("size")
    if size is not None and path.stat().st_size != int(size):
        raise DataError(f"{label or path}: {path.stat().st_size} bytes, expected {int(size)}; "
                        "the file is truncated or not the official one")
    if checksums.get("md5_first_mib") and head_md5(path) != checksums["md5_first_mib"].lower():
        raise DataError(f"{label or path}: md5 of the first MiB mismatch (expected {checksums['md5_first_mib']}); "
                        "the file is corrupt or not the official one")
    for algorithm in ("sha256", "md5"):
        expected = checksums.get(algorithm)
        if expected and file_digest(path, algorithm) != expected.lower():
            raise DataError(f"{label or path}: {algorithm} mismatch (expected {expected}); "
                            "the file is corrupt or not the official one")


def fetch(url: str, dest: Path, checksums: dict | None = None, local: str | None = None, timeout: float = 60) -> Path:
    """Put the archive at ``dest``: copied from ``local`` if given, else downloaded from ``url``.
    Only a verified file is moved into place."""
    dest = Path(dest)
    checksums = checksums or {}

    source = f"local copy {local}" if local else url
    label = f"{source} (for {dest})"

    def write(tmp: Path) -> None:
        if local:
            if not Path(local).is_file():
                raise DataError(f"configured local copy {local} does not exist (wanted for {dest}); "
                                "fix 'local' in the config")
            try:
                shutil.copyfile(local, tmp)
            except OSError as exc:
                raise DataError(f"could not copy {label}: {exc.strerror or exc}") from None
        else:
            _download(url, tmp, dest, checksums, timeout)
        verify(tmp, checksums, label)

    return write_atomic(dest, write)


def _download(url: str, tmp: Path, dest: Path, checksums: dict, timeout: float) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0)
            done, last = 0, -1
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                out.write(chunk)
                done += len(chunk)
                pct = int(100 * done / total) if total else -1
                if pct >= last + 10:
                    print(f"{dest.name}: {done >> 20} MiB" + (f" ({pct}%)" if total else ""), flush=True)
                    last = pct
    except OSError as exc:
        want = ", ".join(f"{k} {v}" for k, v in checksums.items() if v) or "no checksum configured"
        raise DataError(
            f"could not download {url} ({exc}). Without network access, download it elsewhere and "
            f"place it at {dest.absolute()} ({want}), or set its 'local' path in the config, then re-run."
        ) from None
