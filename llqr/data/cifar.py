"""CIFAR-10/100 read straight from the official binary archives (no TensorFlow).

A record is the label byte(s) then 3072 bytes of the image in CHW order: CIFAR-10 has one
label byte, CIFAR-100 a coarse and a fine byte (the fine label is the class). The loader reads
``cifar-10-binary.tar.gz`` / ``cifar-100-binary.tar.gz`` (as fetched by the workflow) or the
folder it extracts to, keeps the training images as uint8 (augmented and normalised batch by
batch) and the test images normalised. The normalisation is the LLQR reference's per-dataset
mean/std or the SVAG study's, which uses CIFAR-10's mean with its own std for CIFAR-100 too.
"""

from __future__ import annotations

import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..config.families import NORMALIZATIONS
from . import paths
from .arrays import ArrayDataset
from .augment import batch_rng, cifar_train_augment
from .errors import DataError

IMAGE_BYTES = 32 * 32 * 3


@dataclass(frozen=True)
class CifarSpec:
    archive: str  # llqr.data.paths.CIFAR_ARCHIVES, fetched to <folder>/raw/
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    label_bytes: int  # bytes before the pixels
    label_offset: int  # which of them is the class label
    classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


SPECS = {
    "cifar10": CifarSpec(paths.CIFAR_ARCHIVES["cifar10"], "cifar-10-batches-bin",
                         tuple(f"data_batch_{i}.bin" for i in range(1, 6)), ("test_batch.bin",), 1, 0, 10,
                         (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": CifarSpec(paths.CIFAR_ARCHIVES["cifar100"], "cifar-100-binary", ("train.bin",), ("test.bin",), 2, 1,
                          100, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}


class Stats(NamedTuple):
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


# The SVAG study's CIFAR-10 and CIFAR-100 modules share these (its std is not CIFAR-10's pixel std).
SVAG_STATS = Stats((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))


def normalization(spec: CifarSpec, name: str = "reference") -> Stats:
    """The mean/std that config ``normalization=name`` uses for the dataset of ``spec``."""
    if name not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {name!r}")
    return Stats(spec.mean, spec.std) if name == "reference" else SVAG_STATS


def parse_records(buf: bytes, spec: CifarSpec, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(images NHWC uint8, labels int32) of one binary batch file."""
    record = spec.label_bytes + IMAGE_BYTES
    if len(buf) == 0 or len(buf) % record:
        raise DataError(f"{where}: {len(buf)} bytes is not a whole number of {record}-byte records "
                        "(truncated or not a CIFAR binary file); fetch the archive again")
    rows = np.frombuffer(buf, np.uint8).reshape(-1, record)
    labels = rows[:, spec.label_offset].astype(np.int32)
    if labels.max() >= spec.classes:
        raise DataError(
            f"{where}: label {labels.max()} outside 0..{spec.classes - 1}; is this the right CIFAR variant?")
    images = rows[:, spec.label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _read_members(source: Path, spec: CifarSpec) -> dict[str, bytes]:
    wanted = {f"{spec.folder}/{name}" for name in spec.train + spec.test}
    if source.is_dir():
        missing = sorted(m for m in wanted if not (source.parent / m).is_file())
        if missing:
            raise DataError(f"{source} lacks {', '.join(missing)}")
        return {m: (source.parent / m).read_bytes() for m in wanted}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(source, "r:gz") as tar:
            for member in tar:
                name = member.name.lstrip("./")
                if name in wanted and member.isfile():
                    found[name] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{source} is not a readable .tar.gz ({exc}); it is truncated or corrupt: "
                        "delete it and fetch it again") from None
    missing = sorted(wanted - set(found))
    if missing:
        raise DataError(f"{source} lacks {', '.join(missing)}; is it the official {spec.archive}?")
    return found


def find_source(directory: Path, spec: CifarSpec) -> Path:
    for candidate in (paths.raw_file(directory, spec.archive), directory / spec.archive, directory / spec.folder):
        if candidate.exists():
            return candidate
    raise DataError(
        f"no CIFAR data in {directory}: expected {paths.raw_file(directory, spec.archive)} (the workflow fetches it; "
        f"offline, copy the official archive there or set data_sources.<dataset>.local) or an extracted "
        f"{directory / spec.folder}/")


def normalize(images: np.ndarray, stats: CifarSpec | Stats) -> np.ndarray:
    """uint8 pixels -> (x / 255 - mean) / std with ``stats``' mean and std."""
    mean = np.asarray(stats.mean, np.float32)
    std = np.asarray(stats.std, np.float32)
    return (images.astype(np.float32) / 255.0 - mean) / std


def load(directory: Path, name: str, seed: int = 0, crop_mode: str = "batch", padding: str = "reflect",
         use_cutout: bool = True, augment: bool = True, normalization_name: str = "reference") -> ArrayDataset:
    """The dataset; training batch k is augmented from ``batch_rng(seed, k)`` (crop with
    ``crop_mode``/``padding``, flip, Cutout if ``use_cutout``), or only normalised if not ``augment``."""
    spec = SPECS[name]
    stats = normalization(spec, normalization_name)
    source = find_source(Path(directory), spec)
    members = _read_members(source, spec)
    splits = {}
    for split, files in (("train", spec.train), ("test", spec.test)):
        parts = [parse_records(members[f"{spec.folder}/{f}"], spec, f"{source}:{f}") for f in files]
        splits[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))

    def train_inputs(images: np.ndarray, batch_number: int) -> np.ndarray:
        if not augment:
            return normalize(images, stats)
        rng = batch_rng(seed, batch_number)
        return normalize(cifar_train_augment(images, rng, crop_mode, padding=padding, use_cutout=use_cutout), stats)

    return ArrayDataset(
        name=name,
        path=str(source),
        x_train=splits["train"][0],
        y_train=splits["train"][1],
        x_test=normalize(splits["test"][0], stats),
        y_test=splits["test"][1],
        num_classes=spec.classes,
        augment=train_inputs,
    )
