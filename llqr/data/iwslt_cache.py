"""IWSLT14 numeric cache: fairseq-style dictionaries and flat token-id arrays of the BPE'd text.

Training reads ids, never text, so the dictionary build and the encoding run once (a Snakemake
rule calls ``build_cache``) and every job memory-maps the result:

- ``dict.{de,en}.txt``: fairseq format (``token count``), built from the train split only; the
  specials ``<s> <pad> </s> <unk>`` are ids 0-3 and are not listed; tokens ordered by
  (-count, token); ``madeupwordNNNN 0`` pads the size to a multiple of 8 (fairseq's padding_factor).
- ``{split}.{lang}.tokens.npy`` (int32, eos appended to each sentence) and
  ``{split}.{lang}.offsets.npy`` (int64, N+1 offsets): sentence i is ``tokens[off[i]:off[i+1]]``.
- ``metadata.json``: sizes, counts and SHA-256 digests of the inputs. Every file is written
  atomically and metadata.json last, so its presence means the cache is complete.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import tarfile
import tempfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import write_atomic, write_text
from . import paths
from .errors import DataError
from .iwslt_prep import LANGS, PACK_DIR, SPLITS, count_lines

BOS, PAD, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
PAD_MULTIPLE = 8
FORMAT_VERSION = 1
METADATA = paths.CACHE_METADATA  # written last (llqr.data.paths, shared with the rules and the loader)
UNK_HYP, UNK_REF = "UNKNOWNTOKENINHYP", "UNKNOWNTOKENINREF"


def _input(text_dir: Path, split: str, lang: str) -> Path:
    path = text_dir / f"{split}.{lang}"
    if not path.is_file():
        raise DataError(f"{path}: expected a processed IWSLT14 text file, found none; "
                        "re-run the iwslt_bpe rule (or check the cache rule's text_dir)")
    return path


def _read(path: Path) -> tuple[list[list[str]], str]:
    """Whitespace-split lines of ``path`` and the SHA-256 of its bytes.

    Lines are split on ``\\n`` only (not ``str.splitlines``), so the count matches ``wc -l`` and
    the de/en alignment check, whatever Unicode line separators the text contains.
    """
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc}); re-run the iwslt_bpe rule") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.split() for line in lines], hashlib.sha256(data).hexdigest()


def build_dictionary(sentences: list[list[str]]) -> tuple[list[str], list[int]]:
    """Symbols (specials first) and their counts, padded with made-up words to a multiple of 8."""
    counts = Counter(tok for sent in sentences for tok in sent)
    for special in SPECIALS:  # a literal "<unk>" in the text must not become a second entry
        counts.pop(special, None)
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    symbols = list(SPECIALS) + [tok for tok, _ in ordered]
    freqs = [0] * len(SPECIALS) + [n for _, n in ordered]
    k = 0
    while len(symbols) % PAD_MULTIPLE:
        symbols.append(f"madeupword{k:04d}")
        freqs.append(0)
        k += 1
    return symbols, freqs


def encode(sentences: list[list[str]], index: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Flat int32 ids (eos after each sentence, unknown -> unk) and int64 offsets."""
    lengths = np.fromiter((len(s) + 1 for s in sentences), dtype=np.int64, count=len(sentences))
    offsets = np.zeros(len(sentences) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    get = index.get
    flat = (i for sent in sentences for i in [*(get(tok, UNK) for tok in sent), EOS])
    tokens = np.fromiter(flat, dtype=np.int32, count=int(offsets[-1]))
    return tokens, offsets


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a handle, so numpy keeps the temp name as is
            np.save(fh, array)

    write_atomic(path, write)


def build_cache(text_dir, cache_dir) -> dict:
    """Encode ``text_dir/{train,valid,test}.{de,en}`` into ``cache_dir``; returns the metadata."""
    text_dir, cache_dir = Path(text_dir), Path(cache_dir)
    for split in SPLITS:  # cheap checks first: nothing is written for misaligned input
        n_de, n_en = (count_lines(_input(text_dir, split, lang)) for lang in LANGS)
        if n_de != n_en:
            raise DataError(f"{text_dir}: split {split} is not aligned: {split}.de has {n_de} lines but "
                            f"{split}.en has {n_en}; re-run the iwslt_split and iwslt_bpe rules")
        if split == "train" and n_de == 0:
            raise DataError(f"{text_dir}: the train split is empty; re-run the IWSLT14 preparation rules")
    (cache_dir / METADATA).unlink(missing_ok=True)  # a rebuild is incomplete until the new one lands
    meta = {"format_version": FORMAT_VERSION, "specials": list(SPECIALS), "vocab": {}, "splits": {},
            "sha256": {}, "files": []}
    for lang in LANGS:  # one language at a time: the tokenized train text is the memory peak
        train, meta["sha256"][f"train.{lang}"] = _read(_input(text_dir, "train", lang))
        symbols, freqs = build_dictionary(train)
        name = f"dict.{lang}.txt"
        listed = zip(symbols[len(SPECIALS):], freqs[len(SPECIALS):])
        write_text(cache_dir / name, "".join(f"{s} {n}\n" for s, n in listed))
        meta["vocab"][lang] = len(symbols)
        meta["files"].append(name)
        index = {s: i for i, s in enumerate(symbols)}
        for split in SPLITS:
            if split == "train":
                sentences = train
            else:
                sentences, meta["sha256"][f"{split}.{lang}"] = _read(_input(text_dir, split, lang))
            tokens, offsets = encode(sentences, index)
            for kind, array in (("tokens", tokens), ("offsets", offsets)):
                name = f"{split}.{lang}.{kind}.npy"
                _save_npy(cache_dir / name, array)
                meta["files"].append(name)
            entry = meta["splits"].setdefault(split, {"sentences": len(offsets) - 1, "tokens": {}})
            if entry["sentences"] != len(offsets) - 1:
                raise DataError(f"{text_dir}/{split}.{lang}: changed while the cache was built; "
                                "re-run the iwslt_cache rule")
            entry["tokens"][lang] = int(tokens.size)
        del train, sentences
    write_text(cache_dir / METADATA, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def cache_files() -> list[str]:
    """Names of every file ``build_cache`` writes (the Snakemake rule's outputs), metadata.json last."""
    names = [f"dict.{lang}.txt" for lang in LANGS]
    names += [f"{split}.{lang}.{kind}.npy" for lang in LANGS for split in SPLITS for kind in ("tokens", "offsets")]
    return names + [METADATA]


def build_cache_from_archive(archive, cache_dir) -> dict:
    """``build_cache`` on the split files of the packed archive (the iwslt_pack output)."""
    archive = Path(archive)
    if not archive.is_file():
        raise DataError(f"{archive}: IWSLT14 packed archive not found; run the iwslt_pack rule")
    with tempfile.TemporaryDirectory(prefix="llqr-iwslt-cache-") as tmp:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for name in (f"{split}.{lang}" for split in SPLITS for lang in LANGS):
                    try:
                        fh = tar.extractfile(f"{PACK_DIR}/{name}")
                    except KeyError:
                        fh = None
                    if fh is None:
                        raise DataError(f"{archive}: member {PACK_DIR}/{name} is missing or not a file; "
                                        "re-run the iwslt_pack rule")
                    Path(tmp, name).write_bytes(fh.read())
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise DataError(f"{archive}: cannot read the archive ({exc}); it is corrupt or truncated, "
                            "re-run the iwslt_pack rule") from None
        return build_cache(tmp, cache_dir)


def read_dictionary(path: Path) -> list[str]:
    """Symbols of a fairseq ``dict.txt`` with the four specials prepended."""
    symbols = list(SPECIALS)
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.rsplit(" ", 1)
        if len(parts) != 2 or not parts[1].isdigit():
            raise DataError(f"{path}:{n}: expected 'token count', got {line!r}; re-run the iwslt_cache rule")
        symbols.append(parts[0])
    return symbols


@dataclass(frozen=True)
class Cache:
    """A loaded cache: ``dicts[lang]`` symbol lists; ``tokens``/``offsets`` keyed by (split, lang)."""

    path: Path
    metadata: dict
    dicts: dict
    tokens: dict
    offsets: dict

    def lengths(self, split: str, lang: str) -> np.ndarray:
        """Sentence lengths in tokens, eos included."""
        return np.diff(self.offsets[split, lang])

    def ids(self, split: str, lang: str, i: int) -> np.ndarray:
        off = self.offsets[split, lang]
        return np.asarray(self.tokens[split, lang][off[i]:off[i + 1]])


def load_cache(cache_dir) -> Cache:
    """Memory-map a cache written by ``build_cache``; DataError when it is incomplete."""
    cache_dir = Path(cache_dir)
    meta_path = cache_dir / METADATA
    if not meta_path.is_file():
        raise DataError(f"{meta_path}: not found; the IWSLT14 cache is missing or incomplete, "
                        "re-run the iwslt_cache rule")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{meta_path}: cache format {meta.get('format_version')} != {FORMAT_VERSION}; "
                        "re-run the iwslt_cache rule")
    missing = [name for name in meta["files"] if not (cache_dir / name).is_file()]
    if missing:
        raise DataError(f"{cache_dir}: cache files missing: {', '.join(missing)}; re-run the iwslt_cache rule")
    dicts = {lang: read_dictionary(cache_dir / f"dict.{lang}.txt") for lang in LANGS}
    for lang in LANGS:
        if len(dicts[lang]) != meta["vocab"][lang]:
            raise DataError(f"{cache_dir}/dict.{lang}.txt: {len(dicts[lang])} symbols but metadata says "
                            f"{meta['vocab'][lang]}; re-run the iwslt_cache rule")
    tokens, offsets = {}, {}
    for split in SPLITS:
        for lang in LANGS:
            tokens[split, lang] = np.load(cache_dir / f"{split}.{lang}.tokens.npy", mmap_mode="r")
            offsets[split, lang] = np.load(cache_dir / f"{split}.{lang}.offsets.npy")
    return Cache(cache_dir, meta, dicts, tokens, offsets)


def decode(ids, dictionary: list[str], unk: str = UNK_HYP) -> str:
    """Space-joined (still BPE'd) tokens of ``ids``: stops at eos, drops pad/bos, unk -> ``unk``."""
    out = []
    for i in np.asarray(ids).tolist():
        if i == EOS:
            break
        if i in (PAD, BOS):
            continue
        out.append(unk if i == UNK else dictionary[i])
    return " ".join(out)
