"""Check the user's ImageNet 2012 inputs and index them (names, sizes) before any packing.

The inputs are the official archives (``ILSVRC2012_img_train.tar``, ``ILSVRC2012_img_val.tar``
and the validation labels) or an existing class-folder tree (``train/<wnid>/*.JPEG``,
``val/<wnid>/*.JPEG``). A missing or partial input fails here, naming what was expected.

Validation labels come from Kaggle's ``LOC_val_solution.csv`` (``ImageId,PredictionString``; the
first token of the prediction string is the WordNet ID) or from the devkit: ILSVRC2012 class IDs
(1..1000, one line per validation image in file-number order) in
``ILSVRC2012_validation_ground_truth.txt``, mapped to WordNet IDs by the devkit's ``data/meta.mat``.
The ground-truth file may sit next to the archives or inside ``ILSVRC2012_devkit_t12.tar.gz``; the
devkit itself is always needed for the ID map. Class index = position of the wnid in the sorted list
of training wnids (the usual convention).
"""

from __future__ import annotations

import csv
import io
import re
import tarfile
import zlib
from pathlib import Path

from .errors import DataError

ARCHIVES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
VAL_LABELS = ("LOC_val_solution.csv", "ILSVRC2012_validation_ground_truth.txt")
DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
VAL_NAME = re.compile(r"ILSVRC2012_val_(\d+)")


def index(source: str | None) -> dict:
    if not source:
        raise DataError(
            "no ImageNet source configured: set data_sources.imagenet.source_dir (or $IMAGENET_DIR) to a folder "
            f"holding {', '.join(ARCHIVES)} and one of {', '.join(VAL_LABELS)}, or a class-folder tree train/ + val/"
        )
    root = Path(source)
    if not root.is_dir():
        raise DataError(f"ImageNet source {root} is not a directory")
    if (root / "train").is_dir() and (root / "val").is_dir():
        classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
        val_classes = sorted(p.name for p in (root / "val").iterdir() if p.is_dir())
        if not classes:
            raise DataError(f"{root}/train has no class folders (expected train/<wnid>/*.JPEG)")
        if val_classes != classes:
            missing = sorted(set(classes) - set(val_classes))[:5]
            raise DataError(f"{root}/val classes differ from train classes (missing e.g. {missing})")
        return {"layout": "folders", "root": str(root.absolute()), "classes": len(classes)}
    missing = [a for a in ARCHIVES if not (root / a).is_file()]
    labels = [v for v in VAL_LABELS + (DEVKIT,) if (root / v).is_file()]
    if missing or not labels:
        need = missing + ([] if labels else [
            f"one of {', '.join(VAL_LABELS)} (the validation labels; the ground-truth file also ships in {DEVKIT}, "
            "which its IDs need)"])
        raise DataError(f"ImageNet source {root} is incomplete: missing {', '.join(need)}")
    if VAL_LABELS[0] not in labels and DEVKIT not in labels:
        raise DataError(
            f"ImageNet source {root}: {VAL_LABELS[1]} holds ILSVRC2012 class IDs (1..1000), and mapping them to "
            f"WordNet IDs needs the devkit's data/meta.mat: put {DEVKIT} in {root} (or use Kaggle's {VAL_LABELS[0]})")
    files = {a: (root / a).stat().st_size for a in ARCHIVES + tuple(labels)}
    return {"layout": "archives", "root": str(root.absolute()), "files": files}


def val_number(name: str) -> int | None:
    """The image number of ``ILSVRC2012_val_00000042.JPEG`` (42), or None for another name."""
    m = VAL_NAME.search(Path(name).name)
    return int(m.group(1)) if m else None


def _read_loc_csv(path: Path) -> dict[int, str]:
    labels = {}
    with open(path, newline="") as fh:
        rows = csv.reader(fh)
        header = next(rows, None)
        if not header or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
            raise DataError(f"{path}: expected the header 'ImageId,PredictionString' (Kaggle's LOC_val_solution.csv)")
        for line, row in enumerate(rows, start=2):
            if not row:
                continue
            number = val_number(row[0])
            tokens = row[1].split() if len(row) > 1 else []
            if number is None or not tokens or not tokens[0].startswith("n"):
                raise DataError(f"{path}:{line}: cannot read {row!r} (expected ILSVRC2012_val_NNNNNNNN,nXXXXXXXX ...)")
            labels[number] = tokens[0]
    return labels


def _read_devkit(path: Path) -> tuple[dict[int, str], list[int] | None]:
    """(ILSVRC2012 ID -> wnid from data/meta.mat, the IDs of the ground-truth file if the devkit has it)."""
    from scipy.io import loadmat  # scipy comes with scikit-learn; only this path needs it

    meta = truth = None
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith("data/meta.mat"):
                    meta = tar.extractfile(member).read()
                elif member.isfile() and member.name.endswith(VAL_LABELS[1]):
                    truth = tar.extractfile(member).read().decode()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{path} is not a readable tar.gz ({exc}): fetch the devkit again") from None
    if meta is None:
        raise DataError(f"{path} has no data/meta.mat; is it the ILSVRC2012 devkit ({DEVKIT})?")
    try:
        synsets = loadmat(io.BytesIO(meta), squeeze_me=True)["synsets"]
        ids = [int(i) for i in synsets["ILSVRC2012_ID"].ravel()]
        wnids = [str(w) for w in synsets["WNID"].ravel()]
    except (KeyError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: data/meta.mat has no readable synsets table ({exc})") from None
    id_map = dict(zip(ids, wnids))
    return id_map, (_parse_ids(truth, f"{path}:{VAL_LABELS[1]}") if truth is not None else None)


def _parse_ids(text: str, where: str) -> list[int]:
    try:
        return [int(line) for line in text.split()]
    except ValueError:
        raise DataError(f"{where}: expected one integer class ID per line") from None


def read_val_labels(root) -> dict[int, str]:
    """Validation image number (1-based, from ``ILSVRC2012_val_NNNNNNNN``) -> wnid, from the label files in
    ``root`` (see the module docstring for the accepted forms)."""
    root = Path(root)
    if (root / VAL_LABELS[0]).is_file():
        return _read_loc_csv(root / VAL_LABELS[0])
    if not (root / DEVKIT).is_file():
        raise DataError(
            f"no validation labels in {root}: need {VAL_LABELS[0]}, or {DEVKIT} (with or without a separate "
            f"{VAL_LABELS[1]}): the ground-truth IDs only become WordNet IDs through the devkit's data/meta.mat")
    id_map, truth = _read_devkit(root / DEVKIT)
    if (root / VAL_LABELS[1]).is_file():
        truth = _parse_ids((root / VAL_LABELS[1]).read_text(), str(root / VAL_LABELS[1]))
    if truth is None:
        raise DataError(f"{DEVKIT} in {root} has no {VAL_LABELS[1]}, and none lies next to it")
    unknown = sorted(set(truth) - set(id_map))
    if unknown:
        raise DataError(f"{VAL_LABELS[1]} uses class IDs missing from the devkit's meta.mat (e.g. {unknown[:5]})")
    return {number: id_map[cid] for number, cid in enumerate(truth, start=1)}
