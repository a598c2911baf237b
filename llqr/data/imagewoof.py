"""ImageWoof-10 (fastai's ``imagewoof2``: ten dog breeds of ImageNet; 9,025 training and 3,929
validation images), decoded once from the archive into uint8 arrays that training reads by row.

Which variant and resolution the SINGD study used is [not retrieved]. Used instead: the full-size
archive at the 224 x 224 crops of timm's ImageNet pipeline, which the same authors' companion study
(Lin et al., ICML 2024, "Can we remove the square-root...": ``--data_dir=datasets/imagewoof2`` with
timm, ``crop_pct`` 0.875) trains with. ``decode`` (rule decode_imagewoof) resizes each image's shorter
side to 256 (Pillow bilinear), keeps the centre 256 x 256 and writes ``{split}_x.npy`` (N, 256, 256, 3)
uint8 and ``{split}_y.npy`` int16 in (class, file name) order, then ``meta.json`` last. The loader
memory-maps them:

- training batch k: per image a random resized crop (scale 0.08..1, aspect 3/4..4/3, torchvision's
  ten tries then the centre), resized bilinearly to 224 x 224, a horizontal flip with p = 1/2, then
  ImageNet's mean/std; the draws come from ``batch_rng(seed, k)``, so a batch replays exactly.
  timm's colour jitter (0.4) is not applied.
- evaluation: the centre 224 x 224 of the stored 256 x 256 (timm's resize-256 / centre-crop-224).
"""

from __future__ import annotations

import json
import math
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from ..atomic import write_text
from . import paths
from .arrays import ArrayDataset
from .augment import batch_rng
from .errors import DataError
from .fetch import file_digest
from .imagenet_decode import decode as decode_jpeg, normalize, resize_crop

# the ten WordNet ids, sorted (the label is the position)
CLASSES = ("n02086240", "n02087394", "n02088364", "n02089973", "n02093754", "n02096294", "n02099601",
           "n02105641", "n02111889", "n02115641")
STORED = 256  # decoded side length
CROP = 224
SPLITS = ("train", "val")
SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


def _resize_short_center(image: np.ndarray, size: int = STORED) -> np.ndarray:
    """Shorter side to ``size`` (bilinear), then the centre size x size."""
    from PIL import Image

    h, w = image.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
    top, left = (nh - size) // 2, (nw - size) // 2
    return resized[top:top + size, left:left + size]


def _member_key(name: str):
    """(split, wnid) of an archive member ``imagewoof2/<split>/<wnid>/<file>``, else None."""
    parts = PurePosixPath(name).parts
    if len(parts) == 4 and parts[1] in SPLITS and parts[2] in CLASSES:
        return parts[1], parts[2]
    return None


def decode(archive: Path, out_dir: Path, size: int = STORED, log=print) -> dict:
    """One streaming pass over ``archive`` (the .tgz as fastai publishes it) into ``out_dir``'s arrays
    and meta.json (written last); returns the meta."""
    archive, out_dir = Path(archive), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths.imagewoof_meta(out_dir).unlink(missing_ok=True)
    rows = {split: [] for split in SPLITS}  # (wnid, file name, row in the temp file)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        raw = {split: open(Path(tmp) / f"{split}.raw", "wb") for split in SPLITS}
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for member in tar:
                    key = _member_key(member.name) if member.isfile() else None
                    if key is None:
                        continue
                    image = decode_jpeg(tar.extractfile(member).read())
                    raw[key[0]].write(_resize_short_center(image, size).tobytes())
                    rows[key[0]].append((key[1], PurePosixPath(member.name).name, len(rows[key[0]])))
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise DataError(f"{archive} is not a readable imagewoof2 archive ({exc}); it is truncated or corrupt: "
                            f"delete it and fetch it again (rule fetch_imagewoof)") from None
        finally:
            for fh in raw.values():
                fh.close()
        counts = {}
        for split in SPLITS:
            if not rows[split]:
                raise DataError(f"{archive} holds no {split} images of the ten classes; is it imagewoof2?")
            stored = np.memmap(Path(tmp) / f"{split}.raw", np.uint8, "r", shape=(len(rows[split]), size, size, 3))
            order = sorted(rows[split])
            x = np.lib.format.open_memmap(paths.imagewoof_array(out_dir, split, "x"), "w+", np.uint8,
                                          (len(order), size, size, 3))
            for i, (_w, _n, row) in enumerate(order):
                x[i] = stored[row]
            x.flush()
            del x, stored
            np.save(paths.imagewoof_array(out_dir, split, "y"), np.array([CLASSES.index(w) for w, _n, _r in order],
                                                                          np.int16))
            counts[split] = len(order)
            log(f"[decode_imagewoof] {split}: {len(order)} images")
    # the arrays' digests: a run's input fingerprint hashes meta.json, not 2.5 GB of arrays
    digests = {path.name: file_digest(path, "sha256") for split in SPLITS for kind in ("x", "y")
               for path in [paths.imagewoof_array(out_dir, split, kind)]}
    meta = {"classes": list(CLASSES), "size": size, "counts": counts, "archive": archive.name, "sha256": digests}
    write_text(paths.imagewoof_meta(out_dir), json.dumps(meta, indent=1) + "\n")
    return meta


def crop_params(rng: np.random.Generator, h: int, w: int) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop window (top, left, height, width): ten tries at a random area
    and log-uniform aspect, else the centre crop with the aspect clamped to RATIO."""
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*SCALE)
        aspect = math.exp(rng.uniform(math.log(RATIO[0]), math.log(RATIO[1])))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    ratio = w / h
    ch, cw = (h, round(h * RATIO[1])) if ratio > RATIO[1] else (round(w / RATIO[0]), w) if ratio < RATIO[0] else (h, w)
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def train_transform(images: np.ndarray, rng: np.random.Generator, crop: int = CROP) -> np.ndarray:
    """Random resized crop to crop x crop, flip with p = 1/2, normalise: (n, crop, crop, 3) float32."""
    out = np.empty((len(images), crop, crop, 3), np.float32)
    for i, image in enumerate(images):
        top, left, ch, cw = crop_params(rng, *image.shape[:2])
        window = np.ascontiguousarray(image[top:top + ch, left:left + cw])
        pixels = resize_crop(window, crop, 0, 0, crop) if (ch, cw) != (crop, crop) else window.astype(np.float32)
        if rng.random() < 0.5:
            pixels = pixels[:, ::-1]
        normalize(pixels, out=out[i])
    return out


def eval_transform(images: np.ndarray, crop: int = CROP) -> np.ndarray:
    """The centre crop x crop, normalised."""
    top, left = (images.shape[1] - crop) // 2, (images.shape[2] - crop) // 2
    return normalize(images[:, top:top + crop, left:left + crop].astype(np.float32))


@dataclass(frozen=True)
class ImageWoofDataset(ArrayDataset):
    """Memory-mapped uint8 images; training and evaluation batches transformed on the fly."""

    crop: int = CROP

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.crop, self.crop, 3)

    def eval_batches(self, batch_size: int):
        for start in range(0, self.test_size, batch_size):
            yield (eval_transform(self.x_test[start:start + batch_size], self.crop),
                   self.y_test[start:start + batch_size])


def load(directory, seed: int = 0) -> ImageWoofDataset:
    meta_path = paths.imagewoof_meta(directory)
    if not meta_path.is_file():
        raise DataError(f"ImageWoof is not decoded: {meta_path} not found; build it with `snakemake {meta_path}` "
                        f"(rules fetch_imagewoof and decode_imagewoof)")
    try:
        meta = json.loads(meta_path.read_text())
        arrays = {(split, kind): np.load(paths.imagewoof_array(directory, split, kind), mmap_mode="r")
                  for split in SPLITS for kind in ("x", "y")}
    except (OSError, ValueError) as exc:
        raise DataError(f"decoded ImageWoof in {directory} is incomplete or corrupt ({exc}); delete {meta_path} and "
                        f"run rule decode_imagewoof again") from None
    size = int(meta["size"])
    for split in SPLITS:
        x, y = arrays[(split, "x")], arrays[(split, "y")]
        if x.shape != (meta["counts"][split], size, size, 3) or len(y) != len(x) or (len(y) and y.max() >= 10):
            raise DataError(f"decoded ImageWoof in {directory}: {split} arrays {x.shape} / {y.shape} do not match "
                            f"{meta_path}; delete it and run rule decode_imagewoof again")

    def augment(images: np.ndarray, batch_number: int) -> np.ndarray:
        return train_transform(images, batch_rng(seed, batch_number))

    return ImageWoofDataset(name="imagewoof", path=str(meta_path.parent), x_train=arrays[("train", "x")],
                            y_train=np.asarray(arrays[("train", "y")], np.int32), x_test=arrays[("val", "x")],
                            y_test=np.asarray(arrays[("val", "y")], np.int32), num_classes=len(CLASSES),
                            augment=augment)
