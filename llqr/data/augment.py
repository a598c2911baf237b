"""CIFAR training augmentation on uint8 NHWC batches, replayable from (seed, batch number).

The reference (TF) pads each batch by 4 with reflection, takes one random 32x32 crop of the
whole 4-D batch (so every image in a batch shares the offset), flips each image with p=1/2
and applies a 16x16 Cutout with p=1/2 whose centre may fall anywhere (the square is clipped at
the border) and whose pixels become 0 before normalisation. ``crop_mode="image"`` draws one
offset per image instead, the usual recipe. The SVAG study (torchvision's ``RandomCrop(32,
padding=4)`` and ``RandomHorizontalFlip``) pads with zeros, crops per image and has no Cutout:
``padding="zero"``, ``crop_mode="image"``, ``use_cutout=False``. Each step draws from the batch's
generator after the previous one, so switching Cutout (the last step) off changes no crop or flip.
"""

from __future__ import annotations

import numpy as np

from ..config.families import CROP_MODES, CROP_PADDINGS  # the config layer owns the lists; random_crop dispatches

PAD = 4
CUTOUT = 16
CUTOUT_P = 0.5


def batch_rng(seed: int, batch_number: int) -> np.random.Generator:
    """The augmentation randomness of one training batch: a pure function of its position."""
    return np.random.default_rng([int(seed), 0xA06, int(batch_number)])


def random_crop(images: np.ndarray, rng: np.random.Generator, mode: str = "batch", pad: int = PAD,
                padding: str = "reflect") -> np.ndarray:
    """A random 32x32 window of the image padded by ``pad``: reflected or zero (``padding``) borders."""
    if mode not in CROP_MODES:
        raise ValueError(f"crop_mode must be one of {CROP_MODES}, got {mode!r}")
    if padding not in CROP_PADDINGS:
        raise ValueError(f"crop_padding must be one of {CROP_PADDINGS}, got {padding!r}")
    n, h, w, _ = images.shape
    widths = ((0, 0), (pad, pad), (pad, pad), (0, 0))
    padded = np.pad(images, widths, mode="reflect") if padding == "reflect" else np.pad(images, widths)
    if mode == "batch":
        oy, ox = rng.integers(0, 2 * pad + 1, size=2)
        return padded[:, oy:oy + h, ox:ox + w]
    oy = rng.integers(0, 2 * pad + 1, size=n)
    ox = rng.integers(0, 2 * pad + 1, size=n)
    rows = (oy[:, None] + np.arange(h))[:, :, None]
    cols = (ox[:, None] + np.arange(w))[:, None, :]
    return padded[np.arange(n)[:, None, None], rows, cols]


def random_flip(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    flip = rng.random(images.shape[0]) < 0.5
    out = images.copy()
    out[flip] = out[flip, :, ::-1]
    return out


def cutout(images: np.ndarray, rng: np.random.Generator, size: int = CUTOUT, p: float = CUTOUT_P) -> np.ndarray:
    n, h, w, _ = images.shape
    apply = rng.random(n) < p
    cy, cx = rng.integers(0, h, size=n), rng.integers(0, w, size=n)
    ys, xs = np.arange(h)[None, :], np.arange(w)[None, :]
    in_y = (ys >= (cy - size // 2)[:, None]) & (ys < (cy + size // 2)[:, None])
    in_x = (xs >= (cx - size // 2)[:, None]) & (xs < (cx + size // 2)[:, None])
    mask = apply[:, None, None] & in_y[:, :, None] & in_x[:, None, :]
    out = images.copy()
    out[mask] = 0
    return out


def cifar_train_augment(images: np.ndarray, rng: np.random.Generator, crop_mode: str = "batch",
                        padding: str = "reflect", use_cutout: bool = True) -> np.ndarray:
    """Crop, flip, then Cutout if ``use_cutout``, in the reference's order; uint8 in, uint8 out."""
    out = random_flip(random_crop(images, rng, crop_mode, padding=padding), rng)
    return cutout(out, rng) if use_cutout else out
