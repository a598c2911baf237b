"""IWSLT14 de-en preparation: each step's semantics on a fixture ``de-en.tgz``, its errors, and the
Snakemake rule chain (rules/iwslt.smk) end to end, including rerun after the raw archive changes."""

import hashlib
import json
import tarfile

import pytest

from conftest import REPO, run_snakemake, write_yaml
from fixtures.iwslt import GOOD_PAIRS, HEADER_LINES, XML_SEGS, member_texts, write_archive
from llqr.data import iwslt_prep as prep
from llqr.data.errors import DataError
from llqr.workflow.matrix import load_workflow_config

KEPT_HEADERS = HEADER_LINES - 3  # <url>, <keywords>, <talkid> dropped
FILTERED = HEADER_LINES - 3 + GOOD_PAIRS + 2 + 3 + 1  # + over-long, ratio, empty-side pairs
CLEAN = KEPT_HEADERS + GOOD_PAIRS
N_VALID = CLEAN // 23
N_TEST = sum(XML_SEGS.values())


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The whole chain through the Python functions, once per module."""
    root = tmp_path_factory.mktemp("iwslt")
    archive = write_archive(root / "de-en.tgz")
    out = {"root": root, "extract": prep.extract(archive, root / "ex")}
    for lang in prep.LANGS:
        out[f"tok_{lang}"] = prep.tokenize_train(root / "ex" / prep.train_member(lang), root / "tok" / f"train.{lang}",
                                                 lang, workers=2 if lang == "de" else 1)
        for name in prep.XML_SETS:
            prep.tokenize_xml(root / "ex" / prep.xml_member(name, lang), root / "tok" / f"{name}.{lang}", lang)
    out["clean"] = prep.clean_pair({lg: root / "tok" / f"train.{lg}" for lg in prep.LANGS},
                                   {lg: root / "clean" / f"train.{lg}" for lg in prep.LANGS})
    out["split"] = prep.split({lg: root / "clean" / f"train.{lg}" for lg in prep.LANGS},
                              {lg: [root / "tok" / f"{n}.{lg}" for n in prep.XML_SETS] for lg in prep.LANGS},
                              root / "splits")
    out["bpe"] = prep.bpe(root / "splits", root / "bpe", num_symbols=50)
    prep.pack(root / "bpe", root / "packed.tar.gz")
    return out


def lines(path):
    return path.read_text(encoding="utf-8").splitlines()


def test_extract_writes_every_needed_member(prepared):
    texts = member_texts()
    assert set(prepared["extract"]) == set(prep.members()) and len(prep.members()) == 12
    for name in prep.members():
        assert (prepared["root"] / "ex" / name).read_text(encoding="utf-8") == texts[name]


def test_filter_drops_metadata_lines_and_keeps_title_text():
    out = prep.filter_tags(["<url>u</url>", "<talkid>3</talkid>", "x <keywords>k</keywords>",
                            "<title>A: B</title>", "<description>Desc.</description>", "<speaker>S</speaker>", "plain"])
    assert out == ["A: B", "Desc.", "<speaker>S</speaker>", "plain"]


def test_tokenize_train_counts_and_moses_escaping(prepared):
    assert prepared["tok_de"] == {"raw": HEADER_LINES + FILTERED - KEPT_HEADERS, "filtered": FILTERED}
    tok = lines(prepared["root"] / "tok" / "train.en")
    assert len(tok) == FILTERED
    assert "Anna Example : A title" in tok
    assert "The house tree cat dog , says Anna ." in tok
    assert "&lt; speaker &gt; Anna Beispiel &lt; / speaker &gt;" in tok  # tokenizer.perl escapes by default


def test_parallel_tokenization_keeps_order():
    text = [f"Satz Nummer {i}, bitte." for i in range(50)]
    serial = prep.tokenize(text, "de", workers=1, chunk_size=7)
    assert prep.tokenize(text, "de", workers=2, chunk_size=7) == serial
    assert serial[13] == "Satz Nummer 13 , bitte ."


@pytest.mark.parametrize("de,en,keep", [
    ("a b c", "x y z", True),
    ("a b", "x y z", True),  # ratio exactly 1.5 is kept
    ("a b", "w x y z", False),  # 2.0 on the en side
    ("a b c d", "x y", False),  # 2.0 on the de side
    ("a", "x", True),  # min 1
    ("", "x", False),
    (" ".join("a" * 175), " ".join("x" * 175), True),  # max 175 is inclusive
    (" ".join("a" * 176), " ".join("x" * 175), False),
])
def test_keep_pair_follows_clean_corpus_n(de, en, keep):
    assert prep.keep_pair(de, en) is keep


def test_clean_drops_long_ratio_and_empty_pairs_and_lowercases(prepared):
    root = prepared["root"]
    assert prepared["clean"] == {"input": FILTERED, "kept": CLEAN}
    de, en = lines(root / "clean" / "train.de"), lines(root / "clean" / "train.en")
    assert len(de) == len(en) == CLEAN
    assert all(line == line.lower() for line in de + en)
    assert all(len(d.split()) <= 175 and len(e.split()) <= 175 for d, e in zip(de, en))
    assert "das haus baum katze hund , sagt anna ." in de
    assert not any(line.startswith("ja ") or line.startswith("yes ") for line in de + en)


def test_clean_normalizes_whitespace_and_pipes(tmp_path):
    (tmp_path / "a.de").write_text("  Ein |  Test \nzwei\n")
    (tmp_path / "a.en").write_text("A test\ntwo\n")
    prep.clean_pair({"de": tmp_path / "a.de", "en": tmp_path / "a.en"},
                    {"de": tmp_path / "b.de", "en": tmp_path / "b.en"})
    assert lines(tmp_path / "b.de") == ["ein test", "zwei"]


def test_xml_segments_are_stripped_and_apostrophes_made_ascii(prepared):
    root = prepared["root"]
    assert lines(root / "tok" / "TED.dev2010.en") == [f"sentence {k} from ted dev2010 ." for k in (1, 2, 3)]
    assert lines(root / "tok" / "TED.tst2010.en")[0] == "it &apos;s anna &apos;s idea ."  # U+2019 -> '


def test_splits_valid_is_every_23rd_and_test_is_concatenated_in_order(prepared):
    root = prepared["root"]
    assert prepared["split"] == {"train": CLEAN - N_VALID, "valid": N_VALID, "test": N_TEST}
    assert N_VALID >= 2
    clean = lines(root / "clean" / "train.en")
    assert lines(root / "splits" / "valid.en") == [clean[22], clean[45]]
    assert lines(root / "splits" / "train.en") == [x for i, x in enumerate(clean, 1) if i % 23]
    expected = [line for n in prep.XML_SETS for line in lines(root / "tok" / f"{n}.en")]
    assert lines(root / "splits" / "test.en") == expected
    assert expected[3].endswith("tedx dev2012 .")  # TEDX.dev2012 comes right after TED.dev2010


def test_joint_bpe_marks_subwords_and_restores_the_text(prepared):
    root = prepared["root"]
    assert prepared["bpe"] == {f"{s}.{lg}": n for s, n in prepared["split"].items() for lg in prep.LANGS}
    code = lines(root / "bpe" / "code")
    assert code[0].startswith("#version") and len(code) <= 51
    for name in ("train.de", "train.en", "test.de", "valid.en"):
        bpe_lines = lines(root / "bpe" / name)
        assert bpe_lines and [x.replace("@@ ", "") for x in bpe_lines] == lines(root / "splits" / name)
    assert any("@@ " in x for x in lines(root / "bpe" / "test.en"))
    # one joint code: merges learned from both languages
    assert "sa ys</w>" in code and "sag t</w>" in code


def test_pack_layout(prepared):
    with tarfile.open(prepared["root"] / "packed.tar.gz") as tar:
        names = set(tar.getnames())
        assert names == {f"iwslt14.tokenized.de-en/{s}.{lg}" for s in prep.SPLITS for lg in prep.LANGS} | {
            "iwslt14.tokenized.de-en/code"}
        assert tar.extractfile("iwslt14.tokenized.de-en/valid.de").read().decode() == (
            prepared["root"] / "bpe" / "valid.de").read_text()


# --- errors ------------------------------------------------------------------------------
def test_missing_or_corrupt_archive(tmp_path):
    with pytest.raises(DataError, match="not found"):
        prep.extract(tmp_path / "nope.tgz", tmp_path / "ex")
    bad = tmp_path / "bad.tgz"
    bad.write_bytes(b"not a tarball at all")
    with pytest.raises(DataError, match="corrupt"):
        prep.extract(bad, tmp_path / "ex")
    good = write_archive(tmp_path / "good.tgz").read_bytes()
    (tmp_path / "cut.tgz").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="corrupt|missing"):
        prep.extract(tmp_path / "cut.tgz", tmp_path / "ex2")


def test_missing_member(tmp_path):
    archive = write_archive(tmp_path / "de-en.tgz", drop=prep.xml_member("TED.tst2011", "en"))
    with pytest.raises(DataError, match="IWSLT14.TED.tst2011.de-en.en.xml is missing"):
        prep.extract(archive, tmp_path / "ex")


def test_xml_without_segments(tmp_path):
    (tmp_path / "x.xml").write_text("<mteval>\n<doc>\n</doc>\n</mteval>\n")
    with pytest.raises(DataError, match="no <seg"):
        prep.xml_segments(tmp_path / "x.xml")


def test_mismatched_line_counts(tmp_path):
    (tmp_path / "a.de").write_text("eins\nzwei\n")
    (tmp_path / "a.en").write_text("one\n")
    with pytest.raises(DataError, match="de has 2 lines but en has 1"):
        prep.clean_pair({"de": tmp_path / "a.de", "en": tmp_path / "a.en"},
                        {"de": tmp_path / "b.de", "en": tmp_path / "b.en"})
    with pytest.raises(DataError, match="not aligned"):
        prep.split({"de": tmp_path / "a.de", "en": tmp_path / "a.en"}, {"de": [], "en": []}, tmp_path / "s")


# --- the rule chain ----------------------------------------------------------------------
IWSLT_RULES = ("iwslt_extract", "iwslt_tokenize", "iwslt_clean", "iwslt_split", "iwslt_bpe", "iwslt_pack",
               "iwslt_cache")


def _config(tmp_path, archive):
    names = list(load_workflow_config(REPO / "config/config.yaml")["surfaces"])
    surfaces = {name: None for name in names[1:]}  # one demo surface stays; the runs only target IWSLT files
    return write_yaml(tmp_path / "iwslt.yaml", {
        "surfaces": surfaces,
        "iwslt_bpe_merges": 50,
        "data_sources": {"iwslt14_de_en": {"url": "https://example.invalid/de-en.tgz", "file": "de-en.tgz",
                                           "sha256": hashlib.sha256(archive.read_bytes()).hexdigest(),
                                           "local": str(archive)}},
    })


@pytest.mark.workflow
def test_rule_chain_prepares_and_reruns_after_the_archive_changes(tmp_path):
    archive = write_archive(tmp_path / "mirror" / "de-en.tgz")
    config = _config(tmp_path, archive)
    work = tmp_path / "work"
    work.mkdir()
    target = ["data/iwslt14_de_en/iwslt14.tokenized.de-en.tar.gz", "data/iwslt14_de_en/numeric/metadata.json"]
    run_snakemake([*target, "--cores", "2", "--configfile", str(config)], work)
    iw = work / "data" / "iwslt14_de_en"
    meta = json.loads((iw / "numeric" / "metadata.json").read_text())
    assert meta["splits"]["valid"]["sentences"] == N_VALID and meta["splits"]["test"]["sentences"] == N_TEST
    built = (iw / "numeric" / "train.en.tokens.npy").stat().st_mtime_ns
    again = run_snakemake([*target, "--cores", "2", "--configfile", str(config)], work)
    assert "Nothing to be done" in again.stdout + again.stderr  # the cache is built once and reused
    assert (iw / "numeric" / "train.en.tokens.npy").stat().st_mtime_ns == built
    report = json.loads((iw / "prep_report.json").read_text())
    assert report["clean"] == {"clean/train.tags.de": CLEAN, "clean/train.tags.en": CLEAN}
    assert report["splits"]["splits/valid.en"] == N_VALID and report["bpe"]["bpe/test.de"] == N_TEST
    assert report["tok"]["tok/train.tags.de"] == FILTERED
    with tarfile.open(iw / "iwslt14.tokenized.de-en.tar.gz") as tar:
        assert len(tar.getnames()) == 7
        assert b"@@ " in tar.extractfile("iwslt14.tokenized.de-en/train.en").read()
    assert 1 < len((iw / "bpe" / "code").read_text().splitlines()) <= 51

    # a new raw archive (new checksum in the config) makes every step stale
    write_archive(archive, replace={prep.train_member("en"): member_texts()[prep.train_member("en")].replace(
        "says Anna", "says Ben")})
    config = _config(tmp_path, archive)
    (iw / "raw" / "de-en.tgz").write_bytes(archive.read_bytes())  # as fetch_raw would, with a newer mtime
    proc = run_snakemake([*target, "-n", "--cores", "2", "--configfile", str(config)], work)
    for rule in IWSLT_RULES:
        assert rule in proc.stdout, rule
    run_snakemake([*target, "--cores", "2", "--configfile", str(config)], work)
    assert "says ben" in (iw / "splits" / "train.en").read_text()
    rebuilt = json.loads((iw / "numeric" / "metadata.json").read_text())
    assert rebuilt["sha256"]["train.en"] != meta["sha256"]["train.en"]  # the cache follows the new text
