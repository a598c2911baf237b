"""Dataset registry: config dataset name -> loader of its prepared on-disk form.

The dataset names are ``llqr.config.families.DATASETS``: the config layer owns the list and
``load_dataset`` dispatches on it (tests/test_families.py: every name has a loader, no other has).
Where the prepared files lie in a dataset's folder is ``llqr.data.paths``, shared with the rules.
"""

from __future__ import annotations

from pathlib import Path

from ..config.families import DATASETS, TRANSLATION_DATASETS
from . import paths
from .errors import DataError
from .paths import NUMERIC_CACHE, TRANSLATION_ARCHIVE  # noqa: F401 (importable from here, as before)


def dataset_dir(cfg, data_root: str | Path = "data") -> Path:
    return Path(cfg.dataset_dir) if cfg.dataset_dir else paths.folder(data_root, cfg.dataset)


def load_dataset(cfg, data_root: str | Path = "data", prepare_missing: bool = False):
    """Load the prepared dataset of ``cfg``; raise DataError if it is missing or corrupt.
    ``prepare_missing`` lets a stand-alone run create the shipped demo data on first use."""
    data = _load_full(cfg, data_root, prepare_missing)
    if cfg.train_fraction < 1.0:
        data = train_subset(data, cfg.train_fraction, cfg.data_seed)
    if cfg.test_fraction < 1.0:
        data = eval_subset(data, cfg.test_fraction, cfg.data_seed)
    return data


def _subset_rows(size: int, fraction: float, seed: int, salt: int):
    import numpy as np

    keep = max(1, int(round(fraction * size)))
    return np.sort(np.random.default_rng([seed, salt]).permutation(size)[:keep])


def train_subset(data, fraction: float, seed: int):
    """The same dataset with a fixed random ``fraction`` of its training examples (sorted, so the
    stream's own shuffling is the only order); the test split is untouched."""
    import dataclasses

    rows = _subset_rows(data.train_size, fraction, seed, 0x5AB5E7)
    return dataclasses.replace(data, x_train=data.x_train[rows], y_train=data.y_train[rows])


def eval_subset(data, fraction: float, seed: int):
    """The same dataset with a fixed random ``fraction`` of its test examples (in their order), drawn
    apart from the training subset; the HyperbolicLR study's draw is unseeded, ours is fixed."""
    import dataclasses

    rows = _subset_rows(data.test_size, fraction, seed, 0x7E57)
    return dataclasses.replace(data, x_test=data.x_test[rows], y_test=data.y_test[rows])


def _load_full(cfg, data_root, prepare_missing):
    directory = dataset_dir(cfg, data_root)
    if cfg.dataset == "digits":
        from . import digits

        if prepare_missing and not paths.digits_file(directory).exists():
            digits.prepare(paths.digits_file(directory))
        return digits.load(directory)
    if cfg.dataset == "mod_sum":
        from . import modular

        if prepare_missing and not paths.modular_file(directory, cfg.modulus).exists():
            modular.prepare(paths.modular_file(directory, cfg.modulus), cfg.modulus)
        return modular.load(directory, cfg.modulus)
    if cfg.dataset == "oscillation":
        from . import oscillation

        if prepare_missing and not paths.oscillation_file(directory).exists():
            oscillation.prepare(paths.oscillation_file(directory))
        return oscillation.load(directory, cfg.osc_variant, cfg.osc_history, cfg.osc_horizon)
    if cfg.dataset == "integral":
        from . import integral

        if prepare_missing and not paths.integral_file(directory).exists():
            integral.prepare(paths.integral_file(directory))
        return integral.load(directory)
    if cfg.dataset == "mnist":
        from . import mnist

        return mnist.load(directory)
    if cfg.dataset in ("cifar10", "cifar100"):
        from . import cifar

        return cifar.load(directory, cfg.dataset, seed=cfg.data_seed, crop_mode=cfg.crop_mode,
                          padding=cfg.crop_padding, use_cutout=cfg.cutout, augment=cfg.augment,
                          normalization_name=cfg.normalization)
    if cfg.dataset == "svhn":
        from . import svhn

        return svhn.load(directory)
    if cfg.dataset in ("imagenet", "imagenet100"):  # the same packed format; imagenet100 a class subset
        from . import imagenet

        return imagenet.load(directory, seed=cfg.data_seed)
    if cfg.dataset == "cora":
        from . import cora

        return cora.load(directory)
    if cfg.dataset == "synth_graph":
        from . import synth_graph

        if prepare_missing and not paths.synth_graph_file(directory, "test.index").exists():
            synth_graph.prepare(directory)
        return synth_graph.load(directory)
    if cfg.dataset == "imagewoof":
        from . import imagewoof

        return imagewoof.load(directory, seed=cfg.data_seed)
    if cfg.dataset in TRANSLATION_DATASETS:
        from . import iwslt

        archive, cache = paths.translation_archive(directory), paths.numeric_cache(directory)
        if not archive.is_file():
            raise DataError(f"{archive} not found: prepare it with `snakemake {archive}` (the iwslt_pack rule and "
                            f"the steps before it)")
        if not paths.cache_metadata(directory).is_file():
            raise DataError(f"numeric cache {cache} not found: build it with `snakemake "
                            f"{paths.cache_metadata(directory)}` (the iwslt_cache rule)")
        return iwslt.load(archive, cache, name=cfg.dataset)
    raise DataError(
        f"dataset '{cfg.dataset}' has no loader in this version of llqr (available: {', '.join(DATASETS)})"
    )


__all__ = ["DataError", "dataset_dir", "load_dataset"]
