"""MNIST (28x28 grey digits, 60,000 train / 10,000 test) from the checksummed ``mnist.npz``.

The reference reads MNIST through TFDS; we fetch the same images as one NumPy archive (arrays
``x_train``/``y_train``/``x_test``/``y_test``, uint8) by the workflow's ``fetch_raw`` rule and
normalise as the reference does: pixels / 255, then (x - 0.1307) / 0.3081, no augmentation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import paths
from .arrays import ArrayDataset, image_dataset, read_npz
from .errors import DataError

FILENAME = paths.MNIST  # fetched to <folder>/raw/ (llqr.data.paths, shared with the rules)
KEYS = ("x_train", "y_train", "x_test", "y_test")
MEAN, STD = 0.1307, 0.3081


def find_source(directory: Path) -> Path:
    for candidate in (paths.mnist_file(directory), directory / FILENAME):
        if candidate.is_file():
            return candidate
    raise DataError(f"no MNIST data in {directory}: expected {paths.mnist_file(directory)} (the workflow fetches "
                    f"it; offline, copy mnist.npz there or set data_sources.mnist.local)")


def normalize(images: np.ndarray) -> np.ndarray:
    return ((images.astype(np.float32) / 255.0 - MEAN) / STD)[..., None]  # (N, 28, 28, 1)


def load(directory: Path) -> ArrayDataset:
    path = find_source(Path(directory))
    arrays = read_npz(path, KEYS, "delete it and fetch it again")
    return image_dataset("mnist", path, arrays, (28, 28), 10, normalize)
