"""Modular addition, the grokking task: ``a + b mod p`` for every pair (a, b) of residues.

The reference builds the p² equations in memory at start-up; here ``prepare`` writes them once to
``p<p>.npz`` (a Snakemake rule, no download; the same bytes on every run), so grokking cells read
a real on-disk dataset like every other cell. Each example is the token sequence ``[a, op, b, =]``
with the reference's vocabulary (0 = the op symbol, 1 = "=", residue r = r + 2) and the label
``(a + b) mod p``. The pairs are split once, by a fixed seed, into the reference's 60% train and
40% test (the same sizes; numpy's permutation, so not the same pairs as the reference's JAX one).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import paths
from .arrays import ArrayDataset, read_npz, save_npz_reproducible
from .errors import DataError

TRAIN_FRACTION = 0.6  # the reference's frac_train
SPLIT_SEED = 0
OP, EQ, OFFSET = 0, 1, 2  # token ids of the op symbol and "=", and of residue 0
KEYS = ("x_train", "y_train", "x_test", "y_test", "modulus")


def train_count(p: int) -> int:
    """Training pairs of modulus ``p`` (the reference's int(p² * frac_train))."""
    return int(p * p * TRAIN_FRACTION)


def equations(p: int) -> tuple[np.ndarray, np.ndarray]:
    """All p² examples, pair index a·p + b in row order: tokens (p², 4) and labels (p²,)."""
    a, b = np.divmod(np.arange(p * p), p)
    tokens = np.stack([a + OFFSET, np.full_like(a, OP), b + OFFSET, np.full_like(a, EQ)], axis=1)
    return tokens.astype(np.int32), ((a + b) % p).astype(np.int32)


def prepare(out_path: Path, p: int) -> dict:
    """Write the split equations of modulus ``p`` to ``out_path``; returns counts for the prep log."""
    if p < 2:
        raise ValueError(f"modulus must be at least 2, got {p}")
    tokens, labels = equations(p)
    order = np.random.default_rng(SPLIT_SEED).permutation(p * p)
    train, test = order[: train_count(p)], order[train_count(p):]
    save_npz_reproducible(Path(out_path), x_train=tokens[train], y_train=labels[train], x_test=tokens[test],
                    y_test=labels[test], modulus=np.int32(p))
    return {"modulus": p, "train": int(len(train)), "test": int(len(test)), "classes": p}


def load(directory: Path, p: int) -> ArrayDataset:
    path = paths.modular_file(directory, p)
    if not path.is_file():
        raise DataError(f"modular-addition data for p={p} not found at {path}; create it with "
                        f"`snakemake {path}` (rule prepare_modular)")
    arrays = read_npz(path, KEYS, "delete it and re-create it")
    if int(arrays["modulus"]) != p:
        raise DataError(f"{path} holds p={int(arrays['modulus'])}, not the configured modulus {p}")
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 2 or x.shape[1] != 4 or len(x) != len(y) or len(y) == 0:
            raise DataError(f"{path}: {split} arrays have unexpected shapes {x.shape} / {y.shape}")
        if y.min() < 0 or y.max() >= p or x.min() < 0 or x.max() >= p + OFFSET:
            raise DataError(f"{path}: {split} tokens or labels outside the vocabulary of p={p}")
    return ArrayDataset(name="mod_sum", path=str(path), x_train=arrays["x_train"].astype(np.int32),
                        y_train=arrays["y_train"].astype(np.int32), x_test=arrays["x_test"].astype(np.int32),
                        y_test=arrays["y_test"].astype(np.int32), num_classes=p)
