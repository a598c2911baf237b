"""Dataset registry: config dataset name -> loader of its prepared on-disk form."""

from __future__ import annotations

from pathlib import Path

from .errors import DataError

READY = ("digits", "mnist", "cifar10", "cifar100", "imagenet", "iwslt14_de_en", "synth_de_en", "mod_sum")
TRANSLATION_ARCHIVE = "iwslt14.tokenized.de-en.tar.gz"  # rules/iwslt.smk: iwslt_pack
NUMERIC_CACHE = "numeric"  # rules/iwslt.smk: iwslt_cache


def dataset_dir(cfg, data_root: str | Path = "data") -> Path:
    return Path(cfg.dataset_dir) if cfg.dataset_dir else Path(data_root) / cfg.dataset


def load_dataset(cfg, data_root: str | Path = "data", prepare_missing: bool = False):
    """Load the prepared dataset of ``cfg``; raise DataError if it is missing or corrupt.
    ``prepare_missing`` lets a stand-alone run create the shipped demo data on first use."""
    data = _load_full(cfg, data_root, prepare_missing)
    if cfg.train_fraction < 1.0:
        return train_subset(data, cfg.train_fraction, cfg.data_seed)
    return data


def train_subset(data, fraction: float, seed: int):
    """The same dataset with a fixed random ``fraction`` of its training examples (sorted, so the
    stream's own shuffling is the only order); the test split is untouched."""
    import dataclasses

    import numpy as np

    keep = max(1, int(round(fraction * data.train_size)))
    rows = np.sort(np.random.default_rng([seed, 0x5AB5E7]).permutation(data.train_size)[:keep])
    return dataclasses.replace(data, x_train=data.x_train[rows], y_train=data.y_train[rows])


def _load_full(cfg, data_root, prepare_missing):
    directory = dataset_dir(cfg, data_root)
    if cfg.dataset == "digits":
        from . import digits

        if prepare_missing and not (directory / digits.FILENAME).exists():
            digits.prepare(directory / digits.FILENAME)
        return digits.load(directory)
    if cfg.dataset == "mod_sum":
        from . import modular

        if prepare_missing and not (directory / modular.filename(cfg.modulus)).exists():
            modular.prepare(directory / modular.filename(cfg.modulus), cfg.modulus)
        return modular.load(directory, cfg.modulus)
    if cfg.dataset == "mnist":
        from . import mnist

        return mnist.load(directory)
    if cfg.dataset in ("cifar10", "cifar100"):
        from . import cifar

        return cifar.load(directory, cfg.dataset, seed=cfg.data_seed, crop_mode=cfg.crop_mode)
    if cfg.dataset == "imagenet":
        from . import imagenet

        return imagenet.load(directory, seed=cfg.data_seed)
    if cfg.dataset in ("iwslt14_de_en", "synth_de_en"):
        from . import iwslt

        archive, cache = directory / TRANSLATION_ARCHIVE, directory / NUMERIC_CACHE
        if not archive.is_file():
            raise DataError(f"{archive} not found: prepare it with `snakemake {archive}` (the iwslt_pack rule and "
                            f"the steps before it)")
        if not (cache / "metadata.json").is_file():
            raise DataError(f"numeric cache {cache} not found: build it with `snakemake {cache}/metadata.json` "
                            f"(the iwslt_cache rule)")
        return iwslt.load(archive, cache, name=cfg.dataset)
    raise DataError(
        f"dataset '{cfg.dataset}' has no loader in this version of llqr (available: {', '.join(READY)})"
    )


__all__ = ["DataError", "dataset_dir", "load_dataset"]
