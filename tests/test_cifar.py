"""CIFAR loader and augmentation on tiny archives in the official binary format."""

import hashlib

import numpy as np
import pytest

from fixtures.cifar import write_archive
from llqr.config import build_config
from llqr.data import DataError, load_dataset
from llqr.data.augment import batch_rng, cifar_train_augment, cutout, random_crop, random_flip
from llqr.data.cifar import SPECS, normalize
from llqr.data.fetch import fetch


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_loader_reads_the_binary_records(tmp_path, name):
    spec = SPECS[name]
    want = write_archive(tmp_path / name / "raw" / spec.archive, name)
    data = load_dataset(build_config({"dataset": name}), tmp_path)
    n_train = 8 * len(spec.train)
    assert data.x_train.shape == (n_train, 32, 32, 3) and data.x_train.dtype == np.uint8
    np.testing.assert_array_equal(data.x_train, want["x_train"])
    np.testing.assert_array_equal(data.y_train, want["y_train"])  # CIFAR-100: the fine label
    np.testing.assert_array_equal(data.y_test, want["y_test"])
    assert data.num_classes == spec.classes
    x_test = want["x_test"].astype(np.float32) / 255.0
    np.testing.assert_allclose(data.x_test, (x_test - np.array(spec.mean)) / np.array(spec.std), rtol=1e-5,
                               atol=1e-6)
    x, y = data.train_batch(np.arange(4), batch_number=3)
    assert x.dtype == np.float32 and x.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(y, want["y_train"][:4])


def test_training_batches_replay_under_the_seed(tmp_path):
    write_archive(tmp_path / "cifar10" / "raw" / SPECS["cifar10"].archive, "cifar10")
    cfg = build_config({"dataset": "cifar10", "data_seed": 5})
    a, b = load_dataset(cfg, tmp_path), load_dataset(cfg, tmp_path)
    idx = np.arange(16)
    np.testing.assert_array_equal(a.train_batch(idx, 7)[0], b.train_batch(idx, 7)[0])
    assert not np.array_equal(a.train_batch(idx, 7)[0], a.train_batch(idx, 8)[0])
    other = load_dataset(build_config({"dataset": "cifar10", "data_seed": 6}), tmp_path)
    assert not np.array_equal(a.train_batch(idx, 7)[0], other.train_batch(idx, 7)[0])


def test_batch_crop_shares_one_offset_and_image_crop_does_not():
    images = np.random.default_rng(0).integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")

    def offsets(out):
        found = []
        for i in range(len(out)):
            hits = [(oy, ox) for oy in range(9) for ox in range(9)
                    if np.array_equal(padded[i, oy:oy + 32, ox:ox + 32], out[i])]
            assert len(hits) >= 1
            found.append(hits[0])
        return set(found)

    assert len(offsets(random_crop(images, np.random.default_rng(1), "batch"))) == 1
    assert len(offsets(random_crop(images, np.random.default_rng(1), "image"))) > 1


def test_flip_and_cutout_act_per_image():
    images = np.random.default_rng(0).integers(1, 256, (64, 32, 32, 3), dtype=np.uint8)  # no zero pixels
    flipped = random_flip(images, np.random.default_rng(2))
    same = [np.array_equal(f, x) for f, x in zip(flipped, images)]
    mirrored = [np.array_equal(f, x[:, ::-1]) for f, x in zip(flipped, images)]
    assert all(s or m for s, m in zip(same, mirrored)) and 10 < sum(mirrored) < 54
    cut = cutout(images, np.random.default_rng(3))
    zeros = (cut == 0).all(axis=-1).sum(axis=(1, 2))
    assert 10 < (zeros > 0).sum() < 54  # p = 1/2
    assert zeros.max() == 16 * 16 and zeros[zeros > 0].min() >= 8 * 8  # a clipped square keeps >= a quarter
    out = cifar_train_augment(images, batch_rng(0, 0))
    assert out.shape == images.shape and out.dtype == np.uint8


def test_normalize_uses_the_dataset_constants():
    white = np.full((1, 32, 32, 3), 255, np.uint8)
    spec = SPECS["cifar100"]
    np.testing.assert_allclose(normalize(white, spec)[0, 0, 0], (1 - np.array(spec.mean)) / np.array(spec.std),
                               rtol=1e-6)


def test_truncated_archive_is_a_clear_error(tmp_path):
    path = tmp_path / "cifar10" / "raw" / SPECS["cifar10"].archive
    write_archive(path, "cifar10")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_dataset(build_config({"dataset": "cifar10"}), tmp_path)


def test_missing_member_and_missing_archive_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match=r"raw/cifar-100-binary\.tar\.gz"):
        load_dataset(build_config({"dataset": "cifar100"}), tmp_path)
    write_archive(tmp_path / "cifar100" / "raw" / SPECS["cifar100"].archive, "cifar100", drop="test.bin")
    with pytest.raises(DataError, match="lacks cifar-100-binary/test.bin"):
        load_dataset(build_config({"dataset": "cifar100"}), tmp_path)


def test_record_size_mismatch_is_a_clear_error(tmp_path):
    # A CIFAR-10 archive where CIFAR-100 is expected has 3073-byte records, not 3074.
    import tarfile

    src = tmp_path / "c10.tar.gz"
    write_archive(src, "cifar10", per_file=2, n_test=2)
    dest = tmp_path / "cifar100" / "raw" / SPECS["cifar100"].archive
    dest.parent.mkdir(parents=True)
    with tarfile.open(src) as tin, tarfile.open(dest, "w:gz") as tout:
        for member in tin:
            data = tin.extractfile(member)
            member.name = member.name.replace("cifar-10-batches-bin/data_batch_1.bin", "cifar-100-binary/train.bin")
            member.name = member.name.replace("cifar-10-batches-bin/test_batch.bin", "cifar-100-binary/test.bin")
            tout.addfile(member, data)
    with pytest.raises(DataError, match="not a whole number of 3074-byte records"):
        load_dataset(build_config({"dataset": "cifar100"}), tmp_path)


def test_checksum_mismatch_keeps_nothing(tmp_path):
    src = tmp_path / "mine.tar.gz"
    write_archive(src, "cifar10", per_file=1, n_test=1)
    good = hashlib.sha256(src.read_bytes()).hexdigest()
    dest = tmp_path / "cifar10" / "raw" / SPECS["cifar10"].archive
    with pytest.raises(DataError, match="sha256 mismatch"):
        fetch("https://example.invalid/x", dest, {"sha256": "0" * 64}, local=str(src))
    assert not dest.exists()
    fetch("https://example.invalid/x", dest, {"sha256": good}, local=str(src))
    assert dest.is_file()
