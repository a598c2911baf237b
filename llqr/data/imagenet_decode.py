"""ImageNet image decoding and the reference's resize/crop/flip, plus the decode-worker loop.

This module imports only numpy and Pillow (never JAX): it runs in the worker processes.

The reference (TF) resizes the decoded image to S x S without keeping the aspect ratio (train:
S = 480 or 256 with p = 1/2; eval: S = 256), takes a 224 x 224 crop (train: uniform offset; eval:
centred), flips with p = 1/2 (train), then divides by 255 and normalises. ``tf.image.resize`` is
bilinear with half-pixel centres, no antialiasing, and float output; ``resize_crop`` computes exactly
that, but only for the 224 x 224 pixels of the crop, so a 480 x 480 resize costs no more than a
224 x 224 one.
"""

from __future__ import annotations

import io
import os
import queue
import signal
from collections import OrderedDict

import numpy as np

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
CROP = 224
EVAL_SIZE = 256
TRAIN_SIZES = (480, 256)
IMAGE_SHAPE = (CROP, CROP, 3)


def decode(data: bytes) -> np.ndarray:
    """JPEG (or PNG, CMYK, greyscale) bytes -> HWC uint8 RGB."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        if im.mode != "RGB":
            im = im.convert("RGB")
        return np.asarray(im)


def _axis(start: int, count: int, in_size: int, out_size: int):
    """Source pixels and weights of output pixels start..start+count of a resize in_size -> out_size
    (TF's half-pixel-centre bilinear: src = (dst + 0.5) * in/out - 0.5, clamped to the image)."""
    src = (np.arange(start, start + count, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
    floor = np.floor(src)
    lo = np.clip(floor, 0, in_size - 1).astype(np.intp)
    hi = np.clip(np.ceil(src), 0, in_size - 1).astype(np.intp)
    return lo, hi, (src - floor).astype(np.float32)


def resize_crop(image: np.ndarray, size: int, top: int, left: int, crop: int = CROP) -> np.ndarray:
    """The ``crop`` x ``crop`` window at (top, left) of ``image`` bilinearly resized to size x size; float32.
    TF's order of operations: interpolate along x in the top and bottom rows, then along y."""
    h, w, c = image.shape
    y0, y1, wy = _axis(top, crop, h, size)
    x0, x1, wx = _axis(left, crop, w, size)
    flat = image.reshape(h * w, c)
    row0, row1 = (y0 * w)[:, None], (y1 * w)[:, None]
    top_row = flat.take(row0 + x0, axis=0).astype(np.float32)
    top_right = flat.take(row0 + x1, axis=0).astype(np.float32)
    bottom_row = flat.take(row1 + x0, axis=0).astype(np.float32)
    bottom_right = flat.take(row1 + x1, axis=0).astype(np.float32)
    wx = wx[None, :, None]
    top_right -= top_row  # in place: top + (top_right - top) * wx, and the same for the bottom row
    top_right *= wx
    top_row += top_right
    bottom_right -= bottom_row
    bottom_right *= wx
    bottom_row += bottom_right
    bottom_row -= top_row
    bottom_row *= wy[:, None, None]
    top_row += bottom_row
    return top_row


def normalize(pixels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Float pixels in 0..255 -> (x / 255 - mean) / std, float32 (into ``out`` if given)."""
    x = np.divide(pixels, np.float32(255.0), dtype=np.float32)
    x -= MEAN
    return np.divide(x, STD, out=out)


def train_params(rng: np.random.Generator, n: int) -> np.ndarray:
    """Per-image (size, top, left, flip) of a training batch, drawn from ``rng`` in a fixed order."""
    size = np.where(rng.random(n) < 0.5, TRAIN_SIZES[0], TRAIN_SIZES[1])
    top = rng.integers(0, size - CROP + 1)
    left = rng.integers(0, size - CROP + 1)
    flip = rng.random(n) < 0.5
    return np.stack([size, top, left, flip.astype(np.int64)], axis=1).astype(np.int32)


def eval_params(n: int) -> np.ndarray:
    """Resize to 256 x 256, centre crop, no flip."""
    offset = (EVAL_SIZE - CROP) // 2
    return np.tile(np.array([[EVAL_SIZE, offset, offset, 0]], np.int32), (n, 1))


def transform(data: bytes, params, out: np.ndarray | None = None) -> np.ndarray:
    """Decode, resize/crop/flip per ``params`` = (size, top, left, flip), normalise: (224, 224, 3) float32
    (written into ``out`` if given)."""
    size, top, left, flip = (int(v) for v in params)
    pixels = resize_crop(decode(data), size, top, left)
    pixels /= np.float32(255.0)  # normalize(), in place on the fresh crop
    pixels -= MEAN
    return np.divide(pixels[:, ::-1] if flip else pixels, STD, out=out)


# --- worker process -----------------------------------------------------------------------------------
def worker_main(tasks, results, stop, shard_paths: list[str]) -> None:
    """Serve decode tasks until a None task, the ``stop`` event, or the parent's death.

    A task is (job, start, refs (m, 3) [shard, offset, length], params (m, 4), out) with ``out`` either
    (slot file, first row): write the images there, or None: send them back. A result is
    (job, start, error message or None, images or None)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)  # the parent checkpoints on these and then closes the pool
    parent = os.getppid()
    fds: dict[int, int] = {}
    maps: OrderedDict = OrderedDict()
    try:
        while True:
            try:
                task = tasks.get(timeout=1.0)
            except queue.Empty:
                if os.getppid() != parent or stop.is_set():
                    return
                continue
            if task is None or stop.is_set():
                return
            job, start, refs, params, out = task
            try:
                if out is None:
                    dest, row = np.empty((len(refs), *IMAGE_SHAPE), np.float32), 0
                else:
                    path, row = out
                    if path not in maps:
                        if len(maps) >= 4:
                            maps.popitem(last=False)
                        maps[path] = np.memmap(path, np.float32, "r+").reshape(-1, *IMAGE_SHAPE)
                    dest = maps[path]
                for j, ((shard, offset, length), p) in enumerate(zip(refs, params)):
                    if shard not in fds:
                        fds[shard] = os.open(shard_paths[shard], os.O_RDONLY)
                    data = os.pread(fds[shard], int(length), int(offset))
                    if len(data) != length:
                        raise OSError(f"{shard_paths[shard]} ends before byte {offset + length} (truncated)")
                    try:
                        transform(data, p, out=dest[row + j])
                    except Exception as exc:
                        raise ValueError(f"the image at byte {offset} of {shard_paths[shard]} does not decode "
                                         f"({type(exc).__name__}: {exc})") from None
                results.put((job, start, None, dest if out is None else None))
            except Exception as exc:
                results.put((job, start, f"{type(exc).__name__}: {exc}", None))
    finally:
        results.cancel_join_thread()  # never block this process's exit on an unread result
        for fd in fds.values():
            os.close(fd)
