"""Data preparation errors: fetch/verify, the ImageNet input check, the digits loader."""

import hashlib

import numpy as np
import pytest

from llqr.data import digits
from llqr.data.errors import DataError
from llqr.data.fetch import fetch
from llqr.data.imagenet_index import index


def test_fetch_copies_a_local_file_and_verifies_it(tmp_path):
    src = tmp_path / "src.tar.gz"
    src.write_bytes(b"archive bytes")
    md5 = hashlib.md5(b"archive bytes").hexdigest()
    dest = fetch("http://unused", tmp_path / "out" / "a.tar.gz", {"md5": md5}, local=str(src))
    assert dest.read_bytes() == b"archive bytes"


def test_checksum_mismatch_leaves_nothing_behind(tmp_path):
    src = tmp_path / "src.tar.gz"
    src.write_bytes(b"not the official file")
    with pytest.raises(DataError, match="md5 mismatch"):
        fetch("http://unused", tmp_path / "out" / "a.tar.gz", {"md5": "0" * 32}, local=str(src))
    assert list((tmp_path / "out").iterdir()) == []


def test_offline_download_says_where_to_put_the_file(tmp_path):
    with pytest.raises(DataError, match=r"could not download .*place it at .*a\.tar\.gz \(md5 "):
        fetch("http://127.0.0.1:9/a.tar.gz", tmp_path / "a.tar.gz", {"md5": "0" * 32}, timeout=5)
    assert not (tmp_path / "a.tar.gz").exists()


def test_missing_local_copy_is_named(tmp_path):
    with pytest.raises(DataError, match="configured local copy .*nope does not exist"):
        fetch("http://unused", tmp_path / "a.tar.gz", local=str(tmp_path / "nope"))


def test_imagenet_inputs_are_checked_and_missing_pieces_named(tmp_path):
    with pytest.raises(DataError, match="no ImageNet source configured"):
        index(None)
    (tmp_path / "ILSVRC2012_img_train.tar").write_bytes(b"x")
    with pytest.raises(DataError, match="incomplete: missing ILSVRC2012_img_val.tar, one of LOC_val_solution.csv"):
        index(str(tmp_path))
    (tmp_path / "ILSVRC2012_img_val.tar").write_bytes(b"y")
    (tmp_path / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n")
    assert index(str(tmp_path))["layout"] == "archives"
    folders = tmp_path / "tree"
    for split in ("train", "val"):
        (folders / split / "n01440764").mkdir(parents=True)
    assert index(str(folders)) == {"layout": "folders", "root": str(folders.absolute()), "classes": 1}


def test_missing_digits_file_says_how_to_create_it(tmp_path):
    with pytest.raises(DataError, match=r"digits data not found .*snakemake data/digits/digits.npz"):
        digits.load(tmp_path)


def test_train_fraction_keeps_a_fixed_seeded_subset_and_the_whole_test_split(digits_root):
    from llqr.config import build_config
    from llqr.data import load_dataset

    full = load_dataset(build_config({"dataset": "digits"}), digits_root)
    part = load_dataset(build_config({"dataset": "digits", "train_fraction": 0.1}), digits_root)
    again = load_dataset(build_config({"dataset": "digits", "train_fraction": 0.1}), digits_root)
    other = load_dataset(build_config({"dataset": "digits", "train_fraction": 0.1, "data_seed": 1}), digits_root)
    assert part.train_size == round(0.1 * full.train_size) and part.test_size == full.test_size
    assert np.array_equal(part.x_train, again.x_train) and not np.array_equal(part.x_train, other.x_train)
    rows = {row.tobytes() for row in full.x_train}
    assert all(row.tobytes() in rows for row in part.x_train)
