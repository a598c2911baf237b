"""IWSLT14 German-English preparation, one function per step, each reading and writing plain text.

The steps follow fairseq's ``prepare-iwslt14.sh`` (the reference's scratch script):

1. ``extract``: the 14 needed members of ``de-en.tgz`` (train tag files and the TED/TEDX XMLs).
2. ``tokenize_train``: drop ``<url>``/``<talkid>``/``<keywords>`` lines, remove the ``<title>`` and
   ``<description>`` tags (their text stays), Moses-tokenize (``tokenizer.perl -l L``: escaping on,
   no aggressive dash splitting).
3. ``clean_pair``: ``clean-corpus-n.perl -ratio 1.5 … 1 175`` on the de/en pair, then lowercase.
4. ``tokenize_xml``: ``<seg id`` lines only, tags removed, U+2019 -> ``'``, tokenized, lowercased.
5. ``split``: valid = every 23rd cleaned train line (1-based), train = the rest; test = TED.dev2010 +
   TEDX.dev2012 + TED.tst2010 + TED.tst2011 + TED.tst2012.
6. ``bpe``: joint BPE learned on train.de + train.en (``learn_bpe.py -s N``), applied to all six files.
7. ``pack``: ``iwslt14.tokenized.de-en/{train,valid,test}.{de,en}`` + ``code`` into a .tar.gz.

Every step raises :class:`DataError` with the offending path when its input is missing or malformed.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import re
import tarfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from ..atomic import write_atomic, write_text
from .errors import DataError

LANGS = ("de", "en")
# Test pieces in the order they are concatenated into test.{de,en}.
XML_SETS = ("TED.dev2010", "TEDX.dev2012", "TED.tst2010", "TED.tst2011", "TED.tst2012")
SPLITS = ("train", "valid", "test")
VALID_EVERY = 23
CLEAN_RATIO, CLEAN_MIN, CLEAN_MAX = 1.5, 1, 175
PACK_DIR = "iwslt14.tokenized.de-en"

_DROP_TAGS = ("<url>", "<talkid>", "<keywords>")
_STRIP_TAGS = re.compile(r"</?(?:title|description)>")
_SEG_OPEN = re.compile(r'<seg id="[0-9]*">\s*')
_SEG_CLOSE = re.compile(r"\s*</seg>\s*")


def train_member(lang: str) -> str:
    return f"train.tags.de-en.{lang}"


def xml_member(name: str, lang: str) -> str:
    return f"IWSLT14.{name}.de-en.{lang}.xml"


def members() -> list[str]:
    """Names (inside ``de-en/``) of the archive members the preparation needs."""
    names = [train_member(lang) for lang in LANGS]
    names += [xml_member(name, lang) for name in XML_SETS for lang in LANGS]
    return names


# --- plain-text helpers -----------------------------------------------------------------
def read_lines(path) -> list[str]:
    """Lines of a UTF-8 text file without their line ends."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: expected a text file, found none")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from None


def write_lines(path, lines: Iterable[str]) -> Path:
    return write_text(path, "".join(line + "\n" for line in lines))


def count_lines(path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for _ in fh)


def _check_pair(de_lines: Sequence[str], en_lines: Sequence[str], what: str) -> None:
    if len(de_lines) != len(en_lines):
        raise DataError(f"{what}: de has {len(de_lines)} lines but en has {len(en_lines)}; the pair is not aligned")


# --- 1. extract -------------------------------------------------------------------------
def extract(archive, out_dir) -> dict:
    """Write the needed members of ``de-en.tgz`` into ``out_dir`` (flat); returns their line counts."""
    archive, out_dir = Path(archive), Path(out_dir)
    if not archive.is_file():
        raise DataError(f"{archive}: IWSLT14 archive not found")
    counts = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for name in members():
                try:
                    info = tar.getmember(f"de-en/{name}")
                except KeyError:
                    raise DataError(f"{archive}: member de-en/{name} is missing; not the official de-en.tgz?") from None
                fh = tar.extractfile(info)
                if fh is None:
                    raise DataError(f"{archive}: member de-en/{name} is not a regular file")
                data = fh.read()
                write_atomic(out_dir / name, lambda tmp, data=data: tmp.write_bytes(data))
                counts[name] = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{archive}: cannot read the archive ({exc}); the file is corrupt or truncated") from None
    return counts


# --- 2. train tag filtering and tokenization -------------------------------------------
def filter_tags(lines: Iterable[str]) -> list[str]:
    """Drop metadata lines (<url>, <talkid>, <keywords>); keep <title>/<description> text without tags."""
    return [_STRIP_TAGS.sub("", line) for line in lines if not any(tag in line for tag in _DROP_TAGS)]


_TOKENIZERS: dict = {}


def _tokenize_chunk(args) -> list[str]:
    lang, lines = args
    tok = _TOKENIZERS.get(lang)
    if tok is None:
        from sacremoses import MosesTokenizer

        tok = _TOKENIZERS[lang] = MosesTokenizer(lang=lang)
    # tokenizer.perl escapes special characters unless -no-escape is given; the reference does not give it.
    return [tok.tokenize(line, return_str=True, escape=True) for line in lines]


def tokenize(lines: Sequence[str], lang: str, workers: int = 1, chunk_size: int = 2000) -> list[str]:
    """Moses tokenization of each line (order kept); ``workers`` > 1 tokenizes chunks in processes."""
    lines = list(lines)
    chunks = [(lang, lines[i : i + chunk_size]) for i in range(0, len(lines), chunk_size)]
    if workers <= 1 or len(chunks) <= 1:
        out = [_tokenize_chunk(chunk) for chunk in chunks]
    else:
        # forkserver: never fork a process that may have JAX's threads running (it can deadlock)
        context = multiprocessing.get_context("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                                              else "spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=context) as pool:
            out = list(pool.map(_tokenize_chunk, chunks))
    return [line for chunk in out for line in chunk]


def tokenize_train(src, dest, lang: str, workers: int = 1) -> dict:
    """``train.tags.de-en.L`` -> filtered, Moses-tokenized lines (not yet lowercased)."""
    raw = read_lines(src)
    kept = filter_tags(raw)
    write_lines(dest, tokenize(kept, lang, workers))
    return {"raw": len(raw), "filtered": len(kept)}


# --- 3. clean-corpus-n + lowercase -------------------------------------------------------
def _normalize(line: str) -> str:
    # clean-corpus-n.perl removes '|' (factor separators), squeezes whitespace, trims both ends.
    return " ".join(line.replace("|", "").split())


def keep_pair(de: str, en: str, ratio: float = CLEAN_RATIO, min_len: int = CLEAN_MIN, max_len: int = CLEAN_MAX) -> bool:
    """clean-corpus-n semantics on normalized lines: both sides non-empty, token counts in
    [min_len, max_len], and neither side more than ``ratio`` times as long as the other."""
    n_de, n_en = len(de.split(" ")) if de else 0, len(en.split(" ")) if en else 0
    if n_de == 0 or n_en == 0:
        return False
    if not (min_len <= n_de <= max_len and min_len <= n_en <= max_len):
        return False
    return n_de / n_en <= ratio and n_en / n_de <= ratio


def clean_pair(src: dict, dest: dict, ratio: float = CLEAN_RATIO, min_len: int = CLEAN_MIN,
               max_len: int = CLEAN_MAX) -> dict:
    """Cleaned, lowercased pair: ``src``/``dest`` map 'de'/'en' to paths."""
    de_lines, en_lines = read_lines(src["de"]), read_lines(src["en"])
    _check_pair(de_lines, en_lines, f"{src['de']} / {src['en']}")
    kept_de, kept_en = [], []
    for de, en in zip(de_lines, en_lines):
        de, en = _normalize(de), _normalize(en)
        if keep_pair(de, en, ratio, min_len, max_len):
            kept_de.append(de.lower())  # lowercase.perl: Perl lc on UTF-8 text
            kept_en.append(en.lower())
    write_lines(dest["de"], kept_de)
    write_lines(dest["en"], kept_en)
    return {"input": len(de_lines), "kept": len(kept_de)}


# --- 4. test XMLs ------------------------------------------------------------------------
def xml_segments(path) -> list[str]:
    """Text of the ``<seg id`` lines of an IWSLT XML file, tags removed and U+2019 made ASCII."""
    segs = [line for line in read_lines(path) if "<seg id" in line]
    if not segs:
        raise DataError(f"{path}: no <seg id=...> lines; not an IWSLT evaluation XML")
    return [_SEG_CLOSE.sub("", _SEG_OPEN.sub("", line)).replace("\u2019", "'") for line in segs]


def tokenize_xml(src, dest, lang: str, workers: int = 1) -> int:
    lines = [line.lower() for line in tokenize(xml_segments(src), lang, workers)]
    write_lines(dest, lines)
    return len(lines)


# --- 5. splits ---------------------------------------------------------------------------
def split(clean: dict, test_parts: dict, out_dir, every: int = VALID_EVERY) -> dict:
    """``clean``: lang -> cleaned train path; ``test_parts``: lang -> list of tokenized XML paths
    in concatenation order. Writes ``{train,valid,test}.{de,en}`` into ``out_dir``."""
    out_dir = Path(out_dir)
    lines = {lang: read_lines(clean[lang]) for lang in LANGS}
    _check_pair(lines["de"], lines["en"], "cleaned train")
    tests = {lang: [] for lang in LANGS}
    for de_path, en_path in zip(test_parts["de"], test_parts["en"]):
        de, en = read_lines(de_path), read_lines(en_path)
        _check_pair(de, en, f"{de_path} / {en_path}")
        tests["de"] += de
        tests["en"] += en
    counts = {}
    for lang in LANGS:
        valid = [line for i, line in enumerate(lines[lang], 1) if i % every == 0]
        train = [line for i, line in enumerate(lines[lang], 1) if i % every != 0]
        for name, part in (("train", train), ("valid", valid), ("test", tests[lang])):
            write_lines(out_dir / f"{name}.{lang}", part)
            counts[name] = len(part)
    return counts


# --- 6. joint BPE ------------------------------------------------------------------------
def learn_codes(train: dict, code_path, num_symbols: int = 10000, min_frequency: int = 2) -> None:
    """learn_bpe.py -s N on train.de followed by train.en (one joint code file)."""
    from subword_nmt.learn_bpe import learn_bpe

    joint = read_lines(train["de"]) + read_lines(train["en"])

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as out:
            text = io.StringIO("".join(line + "\n" for line in joint))
            learn_bpe(text, out, num_symbols, min_frequency=min_frequency)

    write_atomic(code_path, write)


def apply_codes(code_path, src, dest) -> int:
    """apply_bpe.py -c code: ``@@ `` marks a word split into several subwords."""
    from subword_nmt.apply_bpe import BPE

    with open(code_path, encoding="utf-8") as fh:
        bpe = BPE(fh)
    lines = [bpe.process_line(line) for line in read_lines(src)]
    write_lines(dest, lines)
    return len(lines)


def bpe(split_dir, out_dir, num_symbols: int = 10000) -> dict:
    split_dir, out_dir = Path(split_dir), Path(out_dir)
    learn_codes({lang: split_dir / f"train.{lang}" for lang in LANGS}, out_dir / "code", num_symbols)
    return {f"{s}.{lang}": apply_codes(out_dir / "code", split_dir / f"{s}.{lang}", out_dir / f"{s}.{lang}")
            for s in SPLITS for lang in LANGS}


# --- 7. pack + report --------------------------------------------------------------------
def pack(bpe_dir, archive) -> Path:
    """``iwslt14.tokenized.de-en/{train,valid,test}.{de,en}`` + ``code`` into a gzipped tar."""
    bpe_dir = Path(bpe_dir)
    names = [f"{s}.{lang}" for s in SPLITS for lang in LANGS] + ["code"]
    for s in SPLITS:
        _check_pair(read_lines(bpe_dir / f"{s}.de"), read_lines(bpe_dir / f"{s}.en"), f"{bpe_dir}/{s}")

    def write(tmp: Path) -> None:
        with tarfile.open(tmp, "w:gz") as tar:
            for name in names:
                tar.add(bpe_dir / name, arcname=f"{PACK_DIR}/{name}")

    return write_atomic(archive, write)


def report(stages: dict, path) -> dict:
    """``stages``: stage name -> {file label: path}; writes and returns their line counts."""
    counts = {stage: {label: count_lines(p) for label, p in files.items()} for stage, files in stages.items()}
    write_text(path, json.dumps(counts, indent=2) + "\n")
    return counts
