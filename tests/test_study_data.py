"""The SVAG study's data pipeline: zero-padded per-image crops and flips without Cutout (or no
augmentation at all), the study's normalisation, and SVHN read from its official MATLAB files,
fetched by its own checksummed rule."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from conftest import REPO, run_snakemake, slurm_free_env
from fixtures.cifar import write_archive
from fixtures.svhn import write_split
from llqr.config import build_config, families
from llqr.data import DataError, augment, load_dataset, paths, sources
from llqr.data.augment import batch_rng, cifar_train_augment, cutout, random_crop, random_flip
from llqr.data.cifar import SPECS, normalization, normalize

STUDY = {"crop_mode": "image", "crop_padding": "zero", "cutout": False, "normalization": "svag"}


def _no_zero_images(n: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 256, (n, 32, 32, 3), dtype=np.uint8)


@pytest.fixture()
def cifar10(tmp_path):
    write_archive(tmp_path / "cifar10" / "raw" / SPECS["cifar10"].archive, "cifar10")
    return tmp_path


def _load(root, **keys):
    return load_dataset(build_config({"dataset": "cifar10", **keys}), root)


# --- augmentation ----------------------------------------------------------------------------------


def test_the_study_augmentation_replays_from_data_seed_and_batch_number(cifar10):
    a, b = _load(cifar10, data_seed=3, **STUDY), _load(cifar10, data_seed=3, **STUDY)
    idx = np.arange(16)
    np.testing.assert_array_equal(a.train_batch(idx, 5)[0], b.train_batch(idx, 5)[0])
    assert not np.array_equal(a.train_batch(idx, 5)[0], a.train_batch(idx, 6)[0])
    other_seed = _load(cifar10, data_seed=4, **STUDY)
    assert not np.array_equal(a.train_batch(idx, 5)[0], other_seed.train_batch(idx, 5)[0])
    # the same batch number drawn again later (a resumed run) is the same batch
    a.train_batch(idx, 9)
    np.testing.assert_array_equal(a.train_batch(idx, 5)[0], b.train_batch(idx, 5)[0])


def _zero_pad_offsets(images: np.ndarray, out: np.ndarray) -> list[tuple[int, int]]:
    """Each output image's crop offset in the zero-padded batch (exactly one must match)."""
    padded = np.zeros((len(images), 40, 40, 3), np.uint8)
    padded[:, 4:36, 4:36] = images
    found = []
    for i in range(len(out)):
        hits = [(oy, ox) for oy in range(9) for ox in range(9) if np.array_equal(padded[i, oy:oy + 32, ox:ox + 32],
                                                                                  out[i])]
        assert len(hits) == 1, (i, hits)
        found.append(hits[0])
    return found


def test_zero_padding_puts_zeros_at_the_border_and_reflection_none():
    images = _no_zero_images()
    out = random_crop(images, np.random.default_rng(1), "image", padding="zero")
    offsets = _zero_pad_offsets(images, out)
    for img, (oy, ox) in zip(out, offsets):
        zero = (img == 0).all(axis=-1)
        inside = np.zeros((32, 32), bool)
        inside[max(0, 4 - oy):min(32, 36 - oy), max(0, 4 - ox):min(32, 36 - ox)] = True
        np.testing.assert_array_equal(zero, ~inside)  # zero exactly where the window leaves the image
    assert any(offset != (4, 4) for offset in offsets)
    reflected = random_crop(images, np.random.default_rng(1), "image", padding="reflect")
    assert not (reflected == 0).any()


def test_per_image_crops_differ_within_a_batch_and_batch_crops_do_not():
    images = _no_zero_images()
    per_image = _zero_pad_offsets(images, random_crop(images, np.random.default_rng(2), "image", padding="zero"))
    per_batch = _zero_pad_offsets(images, random_crop(images, np.random.default_rng(2), "batch", padding="zero"))
    assert len(set(per_image)) > 5 and len(set(per_batch)) == 1


def test_cutout_off_leaves_the_cropped_and_flipped_images_untouched():
    images = _no_zero_images(64)
    off = cifar_train_augment(images, batch_rng(1, 2), "image", padding="reflect", use_cutout=False)
    rng = batch_rng(1, 2)
    np.testing.assert_array_equal(off, random_flip(random_crop(images, rng, "image"), rng))
    assert not (off == 0).any()
    on = cifar_train_augment(images, batch_rng(1, 2), "image", padding="reflect", use_cutout=True)
    cut = (on != off).any(axis=-1)
    assert cut.any() and (on[cut] == 0).all()  # Cutout, the last step, only zeroes: crops and flips are the same


def test_the_default_augmentation_is_the_reference_pipeline_unchanged():
    """crop (reflect, one offset per batch), flip, Cutout, each drawing from the batch's generator in
    turn: what every existing cell was trained on (the golden test pins whole runs)."""
    images = _no_zero_images(16)
    rng = batch_rng(7, 11)
    want = cutout(random_flip(random_crop(images, rng, "batch"), rng), rng)
    np.testing.assert_array_equal(cifar_train_augment(images, batch_rng(7, 11)), want)
    assert (cifar_train_augment(images, batch_rng(7, 11)) == 0).any()  # the reference's Cutout is on


def test_augmentation_off_returns_the_normalised_originals(cifar10):
    data = _load(cifar10, augment=False, normalization="svag")
    idx = np.array([3, 0, 7, 12])
    want = (data.x_train[idx].astype(np.float64) / 255.0 - np.array([0.4914, 0.4822, 0.4465])) / np.array(
        [0.2023, 0.1994, 0.2010])
    for batch_number in (0, 1, 99):
        x, y = data.train_batch(idx, batch_number)
        np.testing.assert_allclose(x, want, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(y, data.y_train[idx])


def test_the_crop_paddings_and_normalisations_are_the_config_lists():
    assert augment.CROP_PADDINGS is families.CROP_PADDINGS
    images = _no_zero_images(2)
    for padding in families.CROP_PADDINGS:
        assert random_crop(images, np.random.default_rng(0), padding=padding).shape == images.shape
    with pytest.raises(ValueError, match="crop_padding"):
        random_crop(images, np.random.default_rng(0), padding="wrap")
    assert {normalization(SPECS["cifar10"], name) for name in families.NORMALIZATIONS} == {
        (SPECS["cifar10"].mean, SPECS["cifar10"].std), ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))}
    with pytest.raises(ValueError, match="normalization"):
        normalization(SPECS["cifar10"], "imagenet")


# --- normalisation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_the_study_normalisation_constants(name, tmp_path):
    """The study's CIFAR-10 and CIFAR-100 modules both use mean (0.4914, 0.4822, 0.4465) and std
    (0.2023, 0.1994, 0.2010); the default stays the reference's per-dataset pair."""
    stats = normalization(SPECS[name], "svag")
    assert stats.mean == (0.4914, 0.4822, 0.4465) and stats.std == (0.2023, 0.1994, 0.2010)
    assert normalization(SPECS[name]) == (SPECS[name].mean, SPECS[name].std)
    want = write_archive(tmp_path / name / "raw" / SPECS[name].archive, name)
    data = load_dataset(build_config({"dataset": name, "normalization": "svag"}), tmp_path)
    expected = (want["x_test"] / 255.0 - np.array(stats.mean)) / np.array(stats.std)
    np.testing.assert_allclose(data.x_test, expected, rtol=1e-5, atol=1e-5)
    default = load_dataset(build_config({"dataset": name}), tmp_path)
    np.testing.assert_array_equal(default.x_test, normalize(want["x_test"], SPECS[name]))


# --- SVHN ------------------------------------------------------------------------------------------


def _svhn(root, n_train: int = 12, n_test: int = 5) -> dict:
    folder = paths.folder(root, "svhn")
    return {"train": write_split(paths.svhn_file(folder, "train"), n_train, seed=1),
            "test": write_split(paths.svhn_file(folder, "test"), n_test, seed=2)}


def test_svhn_loads_the_official_format_with_label_10_as_digit_0(tmp_path):
    stored = _svhn(tmp_path)
    data = load_dataset(build_config({"dataset": "svhn"}), tmp_path)
    assert data.num_classes == 10 and data.train_size == 12 and data.test_size == 5
    assert data.x_train.shape == (12, 32, 32, 3) and data.x_train.dtype == np.uint8
    assert data.x_test.shape == (5, 32, 32, 3) and data.x_test.dtype == np.float32
    for n in range(12):
        np.testing.assert_array_equal(data.x_train[n], stored["train"]["X"][:, :, :, n])  # X[h, w, c, n]
    y = stored["train"]["y"][:, 0]
    assert (y == 10).any() and data.y_train.dtype == np.int32
    np.testing.assert_array_equal(data.y_train, np.where(y == 10, 0, y))
    assert set(data.y_test) <= set(range(10)) and (data.y_test[stored["test"]["y"][:, 0] == 10] == 0).all()
    # the study's SVHN: no augmentation, mean = std = 0.5, i.e. pixels in [-1, 1]
    x, _ = data.train_batch(np.arange(4), batch_number=3)
    np.testing.assert_allclose(x, data.x_train[:4] / 127.5 - 1.0, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(x, data.train_batch(np.arange(4), batch_number=4)[0])
    np.testing.assert_allclose(data.x_test[0], stored["test"]["X"][:, :, :, 0] / 127.5 - 1.0, rtol=1e-5, atol=1e-6)


def test_a_missing_svhn_file_is_a_clear_error(tmp_path):
    cfg = build_config({"dataset": "svhn"})
    with pytest.raises(DataError, match=r"raw/train_32x32\.mat.*fetch_svhn"):
        load_dataset(cfg, tmp_path)
    write_split(paths.svhn_file(paths.folder(tmp_path, "svhn"), "train"))
    with pytest.raises(DataError, match=r"raw/test_32x32\.mat"):
        load_dataset(cfg, tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "labels", "shape"])
def test_a_corrupt_svhn_file_is_a_clear_error(tmp_path, damage):
    _svhn(tmp_path)
    path = paths.svhn_file(paths.folder(tmp_path, "svhn"), "test")
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a MATLAB file " * 20)
    else:
        from scipy.io import savemat

        x = np.zeros((32, 32, 3, 4) if damage == "labels" else (28, 28, 1, 4), np.uint8)
        savemat(path, {"X": x, "y": np.arange(4).reshape(4, 1).astype(np.uint8)})  # labels 0..3 (0 never stored)
    match = {"truncated": "truncated or corrupt", "garbage": "truncated or corrupt", "labels": "labels outside 1..10",
             "shape": "not 32x32x3xN uint8"}[damage]
    with pytest.raises(DataError, match=match) as err:
        load_dataset(build_config({"dataset": "svhn"}), tmp_path)
    assert str(path) in str(err.value)


def test_the_svhn_sources_are_the_official_files_with_their_md5s():
    assert set(sources.SVHN_MD5) == set(paths.SVHN_SPLITS) == {"train", "test"}  # no 'extra' split
    train = sources.svhn_source("train")
    assert train == {"url": "http://ufldl.stanford.edu/housenumbers/train_32x32.mat",
                     "md5": "e26dedcc434d2e4c54c9b2d4a06d8373", "local": None}
    assert sources.svhn_source("test")["md5"] == "eb5a983be6a315427106f1b164d9cef3"
    moved = sources.svhn_source("test", {"url": "https://mirror.example/svhn/", "local": "/copies/svhn"})
    assert moved["url"] == "https://mirror.example/svhn/test_32x32.mat"
    assert moved["local"] == "/copies/svhn/test_32x32.mat"
    with pytest.raises(ValueError, match="extra"):
        sources.svhn_source("extra")


def test_snakemake_fetches_svhn_with_its_rule_for_a_cell_that_trains_on_it(tmp_path):
    """A dry run of a cell on svhn: its train job reads the two files, each written by fetch_svhn."""
    off = {name: None for name in yaml.safe_load((REPO / "config/config.yaml").read_text())["surfaces"]}
    spec = {"presets": ["digits-mlp"], "seeds": [42], "axes": {"d": [{"label": "svhn", "set": {"dataset": "svhn"}}]}}
    config = tmp_path / "svhn.yaml"
    config.write_text(yaml.safe_dump({"surfaces": {**off, "on_svhn": spec}}))
    proc = run_snakemake(["-n", "--cores", "1", "--configfile", str(config)], tmp_path, env=slurm_free_env(tmp_path))
    files = [str(p) for p in paths.prepared_files("svhn", paths.folder("data", "svhn"))]
    assert files == ["data/svhn/raw/train_32x32.mat", "data/svhn/raw/test_32x32.mat"]
    jobs = proc.stdout.split("\nrule ")[1:]
    fetches = [job for job in jobs if job.startswith("fetch_svhn:")]
    assert sorted(line.split(": ", 1)[1] for job in fetches for line in job.splitlines()
                  if line.strip().startswith("output:")) == sorted(files)
    train = [job for job in jobs if job.startswith("train:")]
    assert len(train) == 1 and all(f in train[0] for f in files)


# --- cells ------------------------------------------------------------------------------------------


def test_without_augmentation_the_crop_and_cutout_settings_share_one_cell():
    from llqr.workflow.cells import normalise

    base = build_config({"dataset": "cifar10"}).to_dict()
    plain = normalise({**base, "augment": False}, base)
    varied = normalise({**base, "augment": False, "crop_mode": "image", "crop_padding": "zero", "cutout": False}, base)
    assert plain == varied
    kept = normalise({**base, "crop_padding": "zero", "cutout": False}, base)
    assert kept["crop_padding"] == "zero" and kept["cutout"] is False
