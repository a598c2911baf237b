"""An in-memory classification dataset and atomic .npz writing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import write_atomic


@dataclass(frozen=True)
class ArrayDataset:
    name: str
    path: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def train_size(self) -> int:
        return int(self.x_train.shape[0])


def save_npz_atomic(path: Path, **arrays) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file handle, so numpy does not append ".npz" to the temp name
            np.savez_compressed(fh, **arrays)

    write_atomic(path, write)
