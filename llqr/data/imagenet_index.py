"""Check the user's ImageNet 2012 inputs and index them (names, sizes) before any packing.

The inputs are the official archives (``ILSVRC2012_img_train.tar``, ``ILSVRC2012_img_val.tar``
and the validation labels) or an existing class-folder tree (``train/<wnid>/*.JPEG``,
``val/<wnid>/*.JPEG``). A missing or partial input fails here, naming what was expected.
"""

from __future__ import annotations

from pathlib import Path

from .errors import DataError

ARCHIVES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
VAL_LABELS = ("LOC_val_solution.csv", "ILSVRC2012_validation_ground_truth.txt")


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
    labels = [v for v in VAL_LABELS if (root / v).is_file()]
    if missing or not labels:
        need = missing + ([] if labels else [f"one of {', '.join(VAL_LABELS)}"])
        raise DataError(f"ImageNet source {root} is incomplete: missing {', '.join(need)}")
    files = {a: (root / a).stat().st_size for a in ARCHIVES + tuple(labels)}
    return {"layout": "archives", "root": str(root.absolute()), "files": files}
