"""SVHN (cropped digits) read from the official MATLAB files, as the SVAG study trains on it.

``train_32x32.mat`` and ``test_32x32.mat`` (MATLAB format 5, fetched by rule fetch_svhn) each hold
``X``, the images as a 32x32x3xN uint8 array, and ``y``, Nx1 labels 1..10 where 10 is the digit 0.
The study's SVHN module trains on the train split alone (not the 531k 'extra' images), with no
augmentation, and normalises with mean = std = 0.5 (pixels in [-1, 1]). Training images stay uint8
and are normalised batch by batch, as CIFAR's.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from . import paths
from .arrays import ArrayDataset
from .errors import DataError

CLASSES = 10
MEAN = STD = (0.5, 0.5, 0.5)  # the study's svhn_module.py
_UNREADABLE = (ValueError, OSError, EOFError, IndexError, TypeError, NotImplementedError, zlib.error)


def read_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images NHWC uint8, labels int32 with 10 -> 0) of one SVHN file; DataError if unreadable."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    fix = "delete it and fetch it again (rule fetch_svhn)"
    try:
        mat = loadmat(path, variable_names=("X", "y"))
    except (MatReadError, *_UNREADABLE) as exc:
        raise DataError(f"{path} is not a readable MATLAB file ({exc}); it is truncated or corrupt: {fix}") from None
    if "X" not in mat or "y" not in mat:
        raise DataError(f"{path} lacks the arrays X and y of an SVHN file: {fix}")
    x, y = mat["X"], np.asarray(mat["y"]).reshape(-1)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y) or len(y) == 0:
        raise DataError(f"{path}: X is {x.dtype} {x.shape} and y has {len(y)} labels, not 32x32x3xN uint8 images "
                        f"with N labels: {fix}")
    if y.min() < 1 or y.max() > CLASSES:
        raise DataError(f"{path}: labels outside 1..10 (10 is the digit 0); is this the official file? {fix}")
    return np.ascontiguousarray(x.transpose(3, 0, 1, 2)), (y % CLASSES).astype(np.int32)


def normalize(images: np.ndarray) -> np.ndarray:
    mean, std = np.asarray(MEAN, np.float32), np.asarray(STD, np.float32)
    return (images.astype(np.float32) / 255.0 - mean) / std


def load(directory: Path) -> ArrayDataset:
    files = {split: paths.svhn_file(directory, split) for split in paths.SVHN_SPLITS}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise DataError(f"no SVHN file {missing[0]}: the workflow fetches it (rule fetch_svhn); offline, copy the "
                        f"official {Path(missing[0]).name} there or set data_sources.svhn.local to a folder holding "
                        f"it")
    (x_train, y_train), (x_test, y_test) = read_split(files["train"]), read_split(files["test"])
    return ArrayDataset(name="svhn", path=str(Path(directory)), x_train=x_train, y_train=y_train,
                        x_test=normalize(x_test), y_test=y_test, num_classes=CLASSES,
                        augment=lambda images, batch_number: normalize(images))
