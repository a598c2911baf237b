"""scikit-learn's digits (8x8 grey images, 10 classes), shipped with scikit-learn: the demo data.

``prepare`` writes it once to ``digits.npz`` (uint8 pixels 0..16, a fixed seeded 80/20
split), so the demo's training jobs read a real on-disk dataset like every other cell.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import paths
from .arrays import ArrayDataset, image_dataset, read_npz, save_npz_atomic
from .errors import DataError

FILENAME = paths.DIGITS  # in the dataset's folder (llqr.data.paths, shared with rule prepare_digits)
KEYS = ("x_train", "y_train", "x_test", "y_test")
TEST_FRACTION = 0.2
SPLIT_SEED = 0


def prepare(out_path: Path) -> dict:
    """Export the digits to ``out_path``; returns counts for the prep log."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.uint8)  # (1797, 8, 8), values 0..16
    labels = bunch.target.astype(np.int32)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    n_test = int(round(TEST_FRACTION * len(labels)))
    test, train = order[:n_test], order[n_test:]
    save_npz_atomic(
        out_path, x_train=images[train], y_train=labels[train], x_test=images[test], y_test=labels[test]
    )
    return {"train": int(len(train)), "test": int(len(test)), "classes": 10}


def load(directory: Path) -> ArrayDataset:
    path = paths.digits_file(directory)
    if not path.is_file():
        target = paths.digits_file(paths.folder("data", "digits"))  # the workflow's, at the default data_dir
        raise DataError(
            f"digits data not found at {path}; create it with `snakemake {target}` "
            f"or `python -m llqr.data.prepare digits {path}`"
        )
    arrays = read_npz(path, KEYS, "delete it and re-create it")
    return image_dataset("digits", path, arrays, (8, 8), 10, lambda x: (x.astype(np.float32) / 16.0)[..., None])
