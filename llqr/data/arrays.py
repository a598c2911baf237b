"""An in-memory dataset (classification, or regression with float targets) and atomic .npz writing."""

from __future__ import annotations

import io
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import write_atomic
from .errors import DataError


@dataclass(frozen=True)
class ArrayDataset:
    name: str
    path: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int  # regression: the target's features per position (the model's outputs)
    # (stored training images, batch number) -> model inputs; None: the stored images are the inputs
    augment: Callable[[np.ndarray, int], np.ndarray] | None = None
    task: str = "classification"  # or "regression": float targets, a loss on them, no accuracy

    @property
    def train_size(self) -> int:
        return int(self.x_train.shape[0])

    def train_batch(self, indices: np.ndarray, batch_number: int) -> tuple[np.ndarray, np.ndarray]:
        """The training batch at ``indices``, augmented as batch ``batch_number`` of the stream."""
        x = self.x_train[indices]
        return (self.augment(x, batch_number) if self.augment else x), self.y_train[indices]

    @property
    def test_size(self) -> int:
        return int(self.x_test.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_test.shape[1:])

    def eval_batches(self, batch_size: int):
        """The whole test split in order, the last batch possibly smaller."""
        for start in range(0, self.test_size, batch_size):
            yield self.x_test[start:start + batch_size], self.y_test[start:start + batch_size]

    def attach_stream(self, stream, depth: int | None = None) -> None:
        """In-memory data needs no prefetching (the interface streaming datasets implement)."""

    def close(self) -> None:
        pass


def image_dataset(name: str, path: Path, arrays: dict, image_shape: tuple, classes: int, scale) -> ArrayDataset:
    """``arrays``' train/test images (N, *image_shape) and labels, checked for shape and label
    range (a DataError naming ``path`` otherwise), with ``scale`` mapping stored pixels to inputs."""
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.shape[1:] != tuple(image_shape) or len(x) != len(y) or len(y) == 0:
            raise DataError(f"{path}: {split} arrays have unexpected shapes {x.shape} / {y.shape}")
        if y.min() < 0 or y.max() >= classes:
            raise DataError(f"{path}: {split} labels outside 0..{classes - 1}")
    return ArrayDataset(name=name, path=str(path), x_train=scale(arrays["x_train"]),
                        y_train=arrays["y_train"].astype(np.int32), x_test=scale(arrays["x_test"]),
                        y_test=arrays["y_test"].astype(np.int32), num_classes=classes)


def read_npz(path: Path, keys, fix: str) -> dict:
    """The named arrays of a .npz file; a missing array or an unreadable (truncated, corrupt,
    bad-deflate) file is a DataError naming the file, and ``fix`` says what to do."""
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in keys if k not in data.files]
            if missing:
                raise DataError(f"{path} is incomplete: missing arrays {missing}; {fix}")
            return {k: data[k] for k in keys}
    except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path} is corrupt ({exc}); {fix}") from None


def save_npz_atomic(path: Path, **arrays) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file handle, so numpy does not append ".npz" to the temp name
            np.savez_compressed(fh, **arrays)

    write_atomic(path, write)


def save_npz_reproducible(path: Path, **arrays) -> None:
    """Like ``save_npz_atomic``, but the same arrays give the same bytes: numpy stamps each zip
    member with the current time, here every member gets a fixed date (for generated datasets
    whose file should not change when the rule runs again)."""

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, value in arrays.items():
                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, np.asanyarray(value), allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, buffer.getvalue())

    write_atomic(path, write)
