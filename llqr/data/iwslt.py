"""IWSLT14 de->en for the runner: node-local staging and the ``TranslationDataset``.

- ``stage`` copies the numeric cache and extracts the packed archive into node-local scratch
  (``$SLURM_TMPDIR``, else ``$TMPDIR``, else the system temp dir), so training never reads the
  shared filesystem. The directory is named after the cache's metadata.json digest, built under a
  temporary name and renamed into place with a marker written last: a complete one is reused, a
  killed job leaves only a dot-prefixed leftover, and concurrent jobs on one node do not collide.
- ``TranslationDataset`` batches from the memory-mapped ids (``iwslt_cache``) at the fixed shapes of
  a ``TokenBatchStream`` (``iwslt_batches``); the extracted text is only checked against the cache.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np

from .errors import DataError
from .iwslt_batches import TokenBatchStream, collate, sort_rows
from .iwslt_cache import BOS, EOS, METADATA, PAD, UNK, UNK_HYP, UNK_REF, Cache, decode, load_cache
from .iwslt_prep import LANGS, PACK_DIR, SPLITS, count_lines

NAME = "iwslt14_de_en"
SRC, TGT = "de", "en"
MARKER = ".staged"
EVAL_ALIGN = 16  # eval widths are rounded up to this, so a whole split compiles a handful of shapes


def scratch_root(scratch=None) -> Path:
    """The ``scratch`` argument, else ``$SLURM_TMPDIR``, else ``$TMPDIR``, else the system temp dir."""
    for candidate in (scratch, os.environ.get("SLURM_TMPDIR"), os.environ.get("TMPDIR")):
        if candidate:
            return Path(candidate)
    return Path(tempfile.gettempdir())


def _member_target(archive: Path, name: str, root: Path) -> Path:
    """Where member ``name`` goes under ``root``; DataError for absolute or escaping paths."""
    posix = PurePosixPath(name)
    if posix.is_absolute() or ".." in posix.parts or not posix.parts:
        raise DataError(f"{archive}: member {name!r} would land outside the staging directory; "
                        "not an archive written by the iwslt_pack rule, re-run it")
    return root.joinpath(*posix.parts)


def _extract(archive: Path, dest: Path) -> None:
    """Extract regular files and directories only, reading the whole archive (detects truncation)."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for info in tar:
                target = _member_target(archive, info.name, dest)
                if info.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if not info.isfile():
                    raise DataError(f"{archive}: member {info.name!r} is not a regular file; "
                                    "re-run the iwslt_pack rule")
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"{archive}: cannot read the archive ({exc}); it is corrupt or truncated, "
                        "re-run the iwslt_pack rule") from None
    missing = [f"{PACK_DIR}/{s}.{lang}" for s in SPLITS for lang in LANGS
               if not (dest / PACK_DIR / f"{s}.{lang}").is_file()]
    if missing:
        raise DataError(f"{archive}: members missing: {', '.join(missing)}; re-run the iwslt_pack rule")


def _check_digests(archive: Path, text_dir: Path, meta: dict) -> None:
    """The extracted text must be the text the cache was built from."""
    for name, digest in meta["sha256"].items():
        if hashlib.sha256((text_dir / name).read_bytes()).hexdigest() != digest:
            raise DataError(f"{archive}: {PACK_DIR}/{name} differs from the text the IWSLT14 cache was built from; "
                            "re-run the iwslt_cache rule (or the iwslt_pack rule if the archive is stale)")


def _build(archive: Path, cache_dir: Path, meta: dict, tmp: Path) -> None:
    (tmp / "cache").mkdir()
    for name in [*meta["files"], METADATA]:
        if not (cache_dir / name).is_file():
            raise DataError(f"{cache_dir / name}: listed in the cache metadata but missing; "
                            "re-run the iwslt_cache rule")
        shutil.copyfile(cache_dir / name, tmp / "cache" / name)
    _extract(archive, tmp)
    _check_digests(archive, tmp / PACK_DIR, meta)
    (tmp / MARKER).write_text(f"{archive}\n{cache_dir}\n", encoding="utf-8")


def stage(archive: Path, cache_dir: Path, scratch: Path | None = None) -> Path:
    """Node-local copy of the cache (``<dir>/cache``) and the extracted text (``<dir>/iwslt14.tokenized.de-en``)."""
    start = time.perf_counter()
    archive, cache_dir = Path(archive), Path(cache_dir)
    if not archive.is_file():
        raise DataError(f"{archive}: IWSLT14 packed archive not found; run the iwslt_pack rule")
    meta_path = cache_dir / METADATA
    if not meta_path.is_file():
        raise DataError(f"{meta_path}: not found; the IWSLT14 cache is missing or incomplete, run the iwslt_cache rule")
    meta_bytes = meta_path.read_bytes()
    root = scratch_root(scratch)
    target = root / f"llqr-iwslt-{hashlib.sha256(meta_bytes).hexdigest()[:16]}"
    if (target / MARKER).is_file():
        print(f"iwslt: reusing staged data in {target} ({time.perf_counter() - start:.1f}s)", flush=True)
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{target.name}."))
    try:
        _build(archive, cache_dir, json.loads(meta_bytes), tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / MARKER).is_file():  # an incomplete directory in the way: replace it
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
            # else another job on this node finished first; use its copy
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"iwslt: staged {archive.name} and the cache into {target} in {time.perf_counter() - start:.1f}s", flush=True)
    return target


class TranslationDataset:
    """IWSLT14 de->en ids for training (bucketed batches) and BLEU evaluation (sorted batches).

    ``train_batch`` needs the ``TokenBatchStream`` for the bucket shapes: the stream made by the
    last ``make_stream`` call, or one passed to ``attach_stream``.
    """

    task = "translation"
    pad_id, eos_id, bos_id, unk_id = PAD, EOS, BOS, UNK

    def __init__(self, cache: Cache, path: str, name: str = NAME):
        self.name, self.path, self.cache = name, path, cache
        self.src_dict, self.tgt_dict = cache.dicts[SRC], cache.dicts[TGT]
        self.src_vocab, self.tgt_vocab = len(self.src_dict), len(self.tgt_dict)
        self.stream: TokenBatchStream | None = None

    # --- sizes ----------------------------------------------------------------------------
    def split_size(self, split: str) -> int:
        return int(self.cache.metadata["splits"][split]["sentences"])

    @property
    def train_size(self) -> int:
        return self.split_size("train")

    def init_inputs(self) -> tuple[np.ndarray, np.ndarray]:
        """A (src, prev) pair for model init: eos everywhere, so no position is masked as pad."""
        return np.full((1, 8), EOS, dtype=np.int32), np.full((1, 8), EOS, dtype=np.int32)

    def _seqs(self, split: str, lang: str, ids) -> list[np.ndarray]:
        return [self.cache.ids(split, lang, int(i)) for i in ids]

    # --- training -------------------------------------------------------------------------
    def make_stream(self, max_tokens: int, seed: int, num_buckets: int = 8) -> TokenBatchStream:
        """A stream over the train split; remembered for ``train_batch``."""
        self.stream = TokenBatchStream(self.cache.lengths("train", SRC), self.cache.lengths("train", TGT),
                                       max_tokens, seed, num_buckets=num_buckets)
        return self.stream

    def attach_stream(self, stream, depth: int | None = None) -> None:
        """Use ``stream``'s buckets for ``train_batch`` (no prefetching: batches are cheap to collate)."""
        if isinstance(stream, TokenBatchStream):
            self.stream = stream

    def train_batch(self, indices, batch_number: int):
        """((src, prev), tgt) of ``indices`` at the fixed shape of their bucket."""
        if self.stream is None:
            raise RuntimeError("train_batch needs a stream: call make_stream or attach_stream first")
        rows, sw, tw = self.stream.shapes[self.stream.bucket_for(indices)]
        return collate(self._seqs("train", SRC, indices), self._seqs("train", TGT, indices), rows, sw, tw)

    def fit_batch(self, stream: TokenBatchStream, cursor: int, n: int):
        """The first ``n`` sentences of stream batches ``cursor``, ``cursor + 1``, ... at the largest
        bucket widths (one compilation for the preconditioner fit); also returns the batches used."""
        chosen: list[np.ndarray] = []
        used = 0
        while sum(len(c) for c in chosen) < n:
            chosen.append(stream.indices(cursor + used))
            used += 1
        ids = np.concatenate(chosen)[:n]
        sw, tw = stream.largest_shape
        (src, prev), tgt = collate(self._seqs("train", SRC, ids), self._seqs("train", TGT, ids), n, sw, tw)
        return (src, prev), tgt, used

    # --- evaluation -----------------------------------------------------------------------
    def eval_batches(self, split: str, batch_size: int, max_examples: int | None = None
                     ) -> Iterator[tuple[tuple[np.ndarray, np.ndarray], np.ndarray, np.ndarray]]:
        """``((src, prev), tgt, example_ids)`` over ``split`` sorted by (src len, tgt len).

        Every batch has exactly ``batch_size`` rows (extra rows all pad) and widths rounded up to
        16; ``example_ids`` lists the real rows in order. ``max_examples`` keeps the first k
        examples in this order (the shortest ones: a cheap, biased BLEU sample).
        """
        src_lens, tgt_lens = self.cache.lengths(split, SRC), self.cache.lengths(split, TGT)
        order = np.lexsort((tgt_lens, src_lens))
        if max_examples is not None:
            order = order[:max_examples]
        for start in range(0, order.size, batch_size):
            chunk = order[start:start + batch_size]
            chunk = chunk[sort_rows(src_lens[chunk])]  # the row order collate uses
            sw = -(-int(src_lens[chunk].max()) // EVAL_ALIGN) * EVAL_ALIGN
            tw = -(-int(tgt_lens[chunk].max()) // EVAL_ALIGN) * EVAL_ALIGN
            (src, prev), tgt = collate(self._seqs(split, SRC, chunk), self._seqs(split, TGT, chunk), batch_size, sw, tw)
            yield (src, prev), tgt, chunk

    def references(self, split: str, example_ids) -> list[str]:
        """BPE'd reference strings (unknown words as UNKNOWNTOKENINREF, as fairseq scores them)."""
        return [decode(self.cache.ids(split, TGT, int(i)), self.tgt_dict, UNK_REF) for i in example_ids]

    def decode(self, ids, unk: str = UNK_HYP) -> str:
        """A hypothesis' BPE'd string (target dictionary; stops at eos)."""
        return decode(ids, self.tgt_dict, unk)

    def close(self) -> None:
        pass


def load(archive, cache_dir, *, scratch=None, name: str = NAME) -> TranslationDataset:
    """Stage, load the cache and check its sentence counts against the extracted text."""
    target = stage(Path(archive), Path(cache_dir), scratch)
    cache = load_cache(target / "cache")
    for split in SPLITS:
        expected = cache.metadata["splits"][split]["sentences"]
        for lang in LANGS:
            found = count_lines(target / PACK_DIR / f"{split}.{lang}")
            if found != expected:
                raise DataError(f"{target / PACK_DIR / f'{split}.{lang}'}: {found} lines but the cache has {expected} "
                                f"sentences; re-run the iwslt_cache rule")
    return TranslationDataset(cache, str(target), name)
