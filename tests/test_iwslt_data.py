"""IWSLT14 numeric cache, token-bucketed batching and the staged TranslationDataset, on a tiny
processed corpus (60 train, 5 valid, 4 test pairs) packed like the real iwslt_pack archive."""

import io
import json
import os
import tarfile
from collections import Counter

import numpy as np
import pytest

from llqr.data import iwslt
from llqr.data.errors import DataError
from llqr.data.iwslt_batches import TokenBatchStream, collate
from llqr.data.iwslt_cache import (
    BOS,
    EOS,
    PAD,
    SPECIALS,
    UNK,
    build_cache,
    build_cache_from_archive,
    build_dictionary,
    cache_files,
    decode,
    load_cache,
)
from llqr.data.iwslt_prep import LANGS, PACK_DIR, SPLITS

SIZES = {"train": 60, "valid": 5, "test": 4}


def corpus() -> dict:
    """(split, lang) -> lines; lengths 1-40 tokens, skewed word counts, an unseen word in valid/test."""
    rng = np.random.default_rng(0)
    out = {}
    for split, n in SIZES.items():
        for lang in LANGS:
            out[split, lang] = []
        for i in range(n):
            n_src = 1 + (i * 7) % 40
            n_tgt = max(1, n_src + i % 5 - 2)
            for lang, length in (("de", n_src), ("en", n_tgt)):
                words = [f"{lang}{min(int(rng.geometric(0.15)), 25)}" + ("@@" if k % 4 == 1 else "")
                         for k in range(length)]
                if split != "train" and i == 1:
                    words[0] = "zzunseen"
                out[split, lang].append(" ".join(words))
    return out


def write_text_dir(path, texts=None):
    path.mkdir(parents=True, exist_ok=True)
    for (split, lang), lines in (texts or corpus()).items():
        (path / f"{split}.{lang}").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def pack(text_dir, archive, extra=None):
    with tarfile.open(archive, "w:gz") as tar:
        for name in [f"{s}.{lang}" for s in SPLITS for lang in LANGS]:
            tar.add(text_dir / name, arcname=f"{PACK_DIR}/{name}")
        code = b"d e\n"
        info = tarfile.TarInfo(f"{PACK_DIR}/code")
        info.size = len(code)
        tar.addfile(info, io.BytesIO(code))
        for info, data in extra or []:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return archive


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("iwslt_data")
    text = write_text_dir(root / "text")
    meta = build_cache(text, root / "cache")
    return {"root": root, "text": text, "cache": root / "cache", "meta": meta,
            "archive": pack(text, root / "iwslt14.tokenized.de-en.tar.gz")}


@pytest.fixture(scope="module")
def dataset(built, tmp_path_factory):
    return iwslt.load(built["archive"], built["cache"], scratch=tmp_path_factory.mktemp("scratch"))


# --- numeric cache -----------------------------------------------------------------------
def test_dictionary_order_specials_and_padding(built):
    symbols, counts = build_dictionary([["b", "a", "c"], ["a", "c"]])
    assert symbols == [*SPECIALS, "a", "c", "b", "madeupword0000"] and counts[4:] == [2, 2, 1, 0]
    assert (BOS, PAD, EOS, UNK) == (0, 1, 2, 3)
    cache = load_cache(built["cache"])
    texts = corpus()
    for lang in LANGS:
        syms = cache.dicts[lang]
        assert syms[:4] == list(SPECIALS) and len(syms) % 8 == 0 and len(syms) == built["meta"]["vocab"][lang]
        freq = Counter(tok for line in texts["train", lang] for tok in line.split())
        real = [s for s in syms[4:] if not s.startswith("madeupword")]
        assert real == sorted(freq, key=lambda t: (-freq[t], t))
        assert "zzunseen" not in syms  # train split only
        lines = (built["cache"] / f"dict.{lang}.txt").read_text().splitlines()
        assert lines[:len(real)] == [f"{t} {freq[t]}" for t in real]
        assert all(line.endswith(" 0") and line.startswith("madeupword") for line in lines[len(real):])
        assert len(lines) == len(syms) - 4


def test_tokens_offsets_round_trip(built):
    cache = load_cache(built["cache"])
    texts = corpus()
    meta = json.loads((built["cache"] / "metadata.json").read_text())
    for split in SPLITS:
        assert meta["splits"][split]["sentences"] == SIZES[split]
        for lang in LANGS:
            tokens, offsets = cache.tokens[split, lang], cache.offsets[split, lang]
            assert tokens.dtype == np.int32 and offsets.dtype == np.int64 and offsets.size == SIZES[split] + 1
            assert meta["splits"][split]["tokens"][lang] == tokens.size == offsets[-1]
            for i, line in enumerate(texts[split, lang]):
                ids = cache.ids(split, lang, i)
                assert ids[-1] == EOS and EOS not in ids[:-1]
                if "zzunseen" not in line:
                    assert decode(ids, cache.dicts[lang]) == line
    assert set(meta["sha256"]) == {f"{s}.{lang}" for s in SPLITS for lang in LANGS}


def test_unknown_words_become_unk(built):
    cache = load_cache(built["cache"])
    ids = cache.ids("valid", "en", 1)
    assert ids[0] == UNK
    line = corpus()["valid", "en"][1]
    assert decode(ids, cache.dicts["en"]) == line.replace("zzunseen", "UNKNOWNTOKENINHYP")
    assert decode([BOS, ids[0], PAD, EOS, 5], cache.dicts["en"], unk="<U>") == "<U>"


def test_errors_name_the_problem(tmp_path):
    texts = corpus()
    texts["valid", "en"] = texts["valid", "en"][:-1]
    with pytest.raises(DataError, match=r"valid.*5.*4"):
        build_cache(write_text_dir(tmp_path / "short", texts), tmp_path / "c1")
    text = write_text_dir(tmp_path / "missing")
    (text / "test.de").unlink()
    with pytest.raises(DataError, match="test.de"):
        build_cache(text, tmp_path / "c2")
    empty = {key: ([] if key[0] == "train" else lines) for key, lines in corpus().items()}
    with pytest.raises(DataError, match="train split is empty"):
        build_cache(write_text_dir(tmp_path / "empty", empty), tmp_path / "c3")
    assert not (tmp_path / "c1" / "metadata.json").exists()


def test_metadata_is_written_last(built, tmp_path, monkeypatch):
    written = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (written.append(os.path.basename(dst)), real_replace(src, dst)))
    build_cache(built["text"], tmp_path / "cache")
    monkeypatch.undo()
    assert written[-1] == "metadata.json" and sorted(written) == sorted(cache_files())
    (tmp_path / "cache" / "valid.en.offsets.npy").unlink()
    with pytest.raises(DataError, match="valid.en.offsets.npy"):
        load_cache(tmp_path / "cache")
    (tmp_path / "cache" / "metadata.json").unlink()
    with pytest.raises(DataError, match="iwslt_cache"):
        load_cache(tmp_path / "cache")


def test_cache_from_the_packed_archive(built, tmp_path):
    meta = build_cache_from_archive(built["archive"], tmp_path / "cache")
    assert meta == built["meta"]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(cache_files())
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(built["archive"].read_bytes()[:100])
    with pytest.raises(DataError, match="iwslt_pack"):
        build_cache_from_archive(bad, tmp_path / "cache2")


# --- batching ----------------------------------------------------------------------------
def lengths():
    cache_lines = corpus()
    return (np.array([len(x.split()) + 1 for x in cache_lines["train", "de"]]),
            np.array([len(x.split()) + 1 for x in cache_lines["train", "en"]]))


def epoch(stream, e):
    return [stream.indices(e * stream.batches_per_epoch + j) for j in range(stream.batches_per_epoch)]


def test_stream_is_seeded_and_replayable():
    src, tgt = lengths()
    a, b = TokenBatchStream(src, tgt, 128, seed=3), TokenBatchStream(src, tgt, 128, seed=3)
    ks = range(3 * a.batches_per_epoch)
    assert all(np.array_equal(a.indices(k), b.indices(k)) for k in ks)
    resumed = TokenBatchStream(src, tgt, 128, seed=3)  # a fresh stream starting mid-run
    k = 2 * a.batches_per_epoch + 1
    assert np.array_equal(resumed.indices(k), a.indices(k)) and resumed.bucket_of(k) == a.bucket_of(k)
    other = TokenBatchStream(src, tgt, 128, seed=4)
    assert any(not np.array_equal(a.indices(k), other.indices(k)) for k in ks)
    assert not all(np.array_equal(x, y) for x, y in zip(epoch(a, 0), epoch(a, 1)))


@pytest.mark.parametrize("max_tokens", [16, 128, 1000])
def test_stream_epochs_buckets_and_budget(max_tokens):
    src, tgt = lengths()
    stream = TokenBatchStream(src, tgt, max_tokens, seed=0)
    shapes = stream.shapes
    assert 1 <= len(shapes) <= 8 and len(set(shapes)) == len(shapes)
    sbs, tbs = [s for _, s, _ in shapes], [t for _, _, t in shapes]
    assert all(x % 8 == 0 for x in sbs + tbs) and sbs == sorted(sbs) and tbs == sorted(tbs)
    assert sbs[-1] >= src.max() and tbs[-1] >= tgt.max()
    for e in range(3):
        batches = epoch(stream, e)
        assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(src.size))  # each once
        for j, ids in enumerate(batches):
            k = e * stream.batches_per_epoch + j
            b = stream.bucket_of(k)
            cap, sb, tb = shapes[b]
            assert 1 <= ids.size <= cap and (src[ids] <= sb).all() and (tgt[ids] <= tb).all()
            assert cap * max(sb, tb) <= max_tokens or cap == 1
            assert stream.bucket_for(ids) == b
            smallest = [i for i, (_, s, t) in enumerate(shapes) if src[ids[0]] <= s and tgt[ids[0]] <= t][0]
            assert smallest == b
    assert stream.indices(stream.batches_per_epoch).size > 0  # first batch of epoch 1


def test_collate_padding_and_shift():
    (src, prev), tgt = collate([[7, EOS], [5, 6, EOS]], [[4, EOS], [8, 9, EOS]], rows=3, src_width=4, tgt_width=5)
    assert src.dtype == prev.dtype == tgt.dtype == np.int32
    assert src.tolist() == [[PAD, 5, 6, EOS], [PAD, PAD, 7, EOS], [PAD] * 4]  # longest source first, left pad
    assert tgt.tolist() == [[8, 9, EOS, PAD, PAD], [4, EOS, PAD, PAD, PAD], [PAD] * 5]
    assert prev.tolist() == [[EOS, 8, 9, PAD, PAD], [EOS, 4, PAD, PAD, PAD], [PAD] * 5]
    with pytest.raises(ValueError, match="does not fit"):
        collate([[5, 6, EOS]], [[EOS]], rows=1, src_width=2, tgt_width=4)
    with pytest.raises(ValueError, match="rows"):
        collate([[EOS], [EOS]], [[EOS], [EOS]], rows=1, src_width=2, tgt_width=2)


# --- staging and the dataset --------------------------------------------------------------
def test_stage_into_scratch_and_reuse(built, tmp_path, capsys, monkeypatch):
    first = iwslt.stage(built["archive"], built["cache"], scratch=tmp_path)
    assert first.parent == tmp_path and first.name.startswith("llqr-iwslt-")
    assert (first / "cache" / "metadata.json").is_file() and (first / PACK_DIR / "code").is_file()
    assert (first / PACK_DIR / "train.de").read_bytes() == (built["text"] / "train.de").read_bytes()
    assert "staged" in capsys.readouterr().out
    marker = (first / iwslt.MARKER).stat().st_mtime_ns
    monkeypatch.setenv("SLURM_TMPDIR", str(tmp_path))
    assert iwslt.stage(built["archive"], built["cache"]) == first  # found through $SLURM_TMPDIR
    assert "reusing" in capsys.readouterr().out and (first / iwslt.MARKER).stat().st_mtime_ns == marker
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary leftovers


def test_bad_archives_raise_data_error(built, tmp_path):
    data = built["archive"].read_bytes()
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"not a tar file at all" * 10)
    for bad in (truncated, garbage):
        with pytest.raises(DataError, match=rf"{bad.name}.*iwslt_pack"):
            iwslt.stage(bad, built["cache"], scratch=tmp_path / "s")
    escaping = tarfile.TarInfo("../evil")
    escaping.size = 1
    with pytest.raises(DataError, match="outside"):
        iwslt.stage(pack(built["text"], tmp_path / "evil.tar.gz", [(escaping, b"x")]), built["cache"],
                    scratch=tmp_path / "s")
    link = tarfile.TarInfo(f"{PACK_DIR}/link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with pytest.raises(DataError, match="not a regular file"):
        iwslt.stage(pack(built["text"], tmp_path / "link.tar.gz", [(link, None)]), built["cache"],
                    scratch=tmp_path / "s")
    other = corpus()
    other["test", "en"] = ["different words"] * SIZES["test"]
    stale = pack(write_text_dir(tmp_path / "other", other), tmp_path / "stale.tar.gz")
    with pytest.raises(DataError, match="test.en differs"):
        iwslt.stage(stale, built["cache"], scratch=tmp_path / "s")
    with pytest.raises(DataError, match="iwslt_pack"):
        iwslt.stage(tmp_path / "absent.tar.gz", built["cache"], scratch=tmp_path / "s")
    assert not any((tmp_path / "s").iterdir())  # failed stagings leave nothing behind


def test_load_checks_counts_against_text(built, tmp_path):
    target = iwslt.stage(built["archive"], built["cache"], scratch=tmp_path)
    with open(target / PACK_DIR / "valid.en", "a") as fh:
        fh.write("one more line\n")
    with pytest.raises(DataError, match="valid.en: 6 lines but the cache has 5"):
        iwslt.load(built["archive"], built["cache"], scratch=tmp_path)


def test_dataset_attributes_and_train_batches(dataset):
    assert dataset.task == "translation" and dataset.train_size == 60 and dataset.split_size("test") == 4
    assert dataset.src_vocab % 8 == 0 and dataset.tgt_vocab == len(dataset.tgt_dict)
    assert (dataset.pad_id, dataset.eos_id, dataset.bos_id, dataset.unk_id) == (PAD, EOS, BOS, UNK)
    src0, prev0 = dataset.init_inputs()
    assert src0.shape == prev0.shape == (1, 8) and (src0 == EOS).all()
    assert len(dataset.make_stream(max_tokens=128, seed=1, num_buckets=2).shapes) <= 2
    stream = dataset.make_stream(max_tokens=128, seed=1)
    texts = corpus()
    for k in range(stream.batches_per_epoch):
        ids = stream.indices(k)
        (src, prev), tgt = dataset.train_batch(ids, k)
        rows, sw, tw = stream.shapes[stream.bucket_of(k)]
        assert src.shape == (rows, sw) and prev.shape == tgt.shape == (rows, tw)
        got = sorted(decode(row, dataset.tgt_dict) for row in tgt[:ids.size])
        assert got == sorted(texts["train", "en"][i] for i in ids)
        assert (tgt[ids.size:] == PAD).all()
        assert dataset.decode(tgt[0]) == decode(tgt[0], dataset.tgt_dict)


def test_fit_batch_uses_the_largest_shape(dataset):
    stream = dataset.make_stream(max_tokens=64, seed=2)
    (src, prev), tgt, used = dataset.fit_batch(stream, cursor=5, n=10)
    sb, tb = stream.bounds[-1]
    assert src.shape == (10, sb) and prev.shape == tgt.shape == (10, tb)
    sizes = [stream.indices(5 + j).size for j in range(used)]
    assert sum(sizes) >= 10 and sum(sizes[:-1]) < 10
    assert (tgt != PAD).any(axis=1).all()  # every row is a real sentence


def test_eval_batches_cover_the_split(dataset):
    for split in ("valid", "test"):
        seen = []
        for (src, prev), tgt, ids in dataset.eval_batches(split, batch_size=2):
            assert src.shape[0] == prev.shape[0] == tgt.shape[0] == 2 and 1 <= ids.size <= 2
            assert src.shape[1] % 16 == 0 and tgt.shape[1] % 16 == 0
            refs = dataset.references(split, ids)
            assert refs == [decode(row, dataset.tgt_dict, unk="UNKNOWNTOKENINREF") for row in tgt[:ids.size]]
            assert (tgt[ids.size:] == PAD).all() and (src[ids.size:] == PAD).all()
            seen += ids.tolist()
        assert sorted(seen) == list(range(dataset.split_size(split)))
    assert "UNKNOWNTOKENINREF" in dataset.references("valid", [1])[0]
    first = [ids for *_, ids in dataset.eval_batches("test", batch_size=3, max_examples=2)]
    assert len(first) == 1 and first[0].size == 2
