"""The HyperbolicLR study's oscillation-forecasting data (ours, after Kim 2024): a damped harmonic
oscillator m·x'' + c·x' + k·x = 0 integrated by the Newmark-beta method, cut into windows of
``history`` positions that predict the next ``horizon``.

The study integrates three fixed oscillators, no random draws: m = 1, k = 200, damping ratio
ζ ∈ {0, 0.01, 0.02} (c = 2·sqrt(k·m)·ζ), x(0) = 0.1, v(0) = 0, a(0) = -20 (= -k·x(0)/m), on
t = 0, 1e-3, ..., 10 (10,001 points), Newmark's average-constant-acceleration scheme (γ = 1/2,
β = 1/4). ``prepare`` writes those trajectories once (a Snakemake rule, no download; the same
bytes on every run); ``load`` does what the study's loader does with them: pick the variant
(simple: ζ = 0; damped: ζ = 0.01; total: all three), min-max normalise the positions over the
variant's rows to [0, 1], slide a window of history + horizon over each trajectory (9,902 windows
each at 50 + 50), and split the windows 80/20. The study's split is torch's random_split, unseeded;
ours is a fixed seeded permutation, and its 20% (the study's validation set) is our test split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import paths
from .arrays import ArrayDataset, read_npz, save_npz_reproducible
from .errors import DataError

MASS, STIFFNESS = 1.0, 200.0
ZETAS = (0.0, 0.01, 0.02)
X0, V0, A0 = 0.1, 0.0, -20.0
DT, T_END = 1e-3, 10.0
GAMMA, BETA = 0.5, 0.25  # Newmark's average constant acceleration
VARIANTS = {"simple": (0.0,), "damped": (0.01,), "total": ZETAS}  # the study's dtype -> its ζ rows
TRAIN_FRACTION = 0.8  # the study's int(0.8 * len(ds)) training windows
SPLIT_SEED = 0
KEYS = ("t", "x", "v", "a", "zeta")


def time_grid(dt: float = DT, t_end: float = T_END) -> np.ndarray:
    """0, dt, ..., up to t_end: floor(t_end / dt) + 1 points, as the study's seq()."""
    return dt * np.arange(int(np.floor(t_end / dt)) + 1)


def newmark_step(x, v, a, c, dt: float = DT, m: float = MASS, k: float = STIFFNESS, gamma: float = GAMMA,
                 beta: float = BETA):
    """One Newmark-beta step of m·a + c·v + k·x = 0: the next acceleration solves the equation of
    motion at the predicted position and velocity, which then take it in."""
    a_next = -(k * x + (c + k * dt) * v + ((1 - gamma) * c * dt + 0.5 * (1 - 2 * beta) * k * dt ** 2) * a) / (
        m + c * gamma * dt + k * beta * dt ** 2)
    v_next = v + (1 - gamma) * dt * a + gamma * dt * a_next
    x_next = x + dt * v + 0.5 * dt ** 2 * ((1 - 2 * beta) * a + 2 * beta * a_next)
    return x_next, v_next, a_next


def trajectories(zetas=ZETAS, dt: float = DT, t_end: float = T_END) -> dict:
    """Position, velocity, acceleration (len(zetas), points) of each damping ratio, float64."""
    zetas = np.asarray(zetas, np.float64)
    c = 2.0 * np.sqrt(STIFFNESS * MASS) * zetas
    t = time_grid(dt, t_end)
    out = {name: np.empty((len(zetas), len(t))) for name in ("x", "v", "a")}
    x, v, a = (np.full(len(zetas), value) for value in (X0, V0, A0))
    for i in range(len(t)):
        out["x"][:, i], out["v"][:, i], out["a"][:, i] = x, v, a
        x, v, a = newmark_step(x, v, a, c, dt)
    return {"t": t, **out, "zeta": zetas}


def prepare(out_path: Path) -> dict:
    """Write the three trajectories to ``out_path``; returns counts for the prep log."""
    data = trajectories()
    save_npz_reproducible(Path(out_path), **data)
    return {"zetas": list(ZETAS), "points": int(data["t"].size), "dt": DT}


def windows(series: np.ndarray, history: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (history, horizon) pair of consecutive windows of one trajectory."""
    slides = np.lib.stride_tricks.sliding_window_view(series, history + horizon)
    return slides[:, :history], slides[:, history:]


def examples(arrays: dict, variant: str, history: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """The variant's windows, (N, history, 1) inputs and (N, horizon, 1) targets in float32, in the
    study's order (trajectory by trajectory)."""
    rows = [int(np.flatnonzero(arrays["zeta"] == z)[0]) for z in VARIANTS[variant]]
    x = arrays["x"][rows]
    x = (x - x.min()) / (x.max() - x.min())  # min-max over the variant's rows, as the study
    pairs = [windows(series, history, horizon) for series in x]
    inputs, targets = (np.concatenate(part)[..., None].astype(np.float32) for part in zip(*pairs))
    return inputs, targets


def train_count(variant: str = "simple", history: int = 50, horizon: int = 50) -> int:
    """Training windows of a variant (the workflow's cost estimate; load builds the same count)."""
    points = int(np.floor(T_END / DT)) + 1
    return int(TRAIN_FRACTION * len(VARIANTS[variant]) * (points - history - horizon + 1))


def split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed 80/20 split of n windows (train indices, test indices)."""
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    cut = int(TRAIN_FRACTION * n)
    return np.sort(order[:cut]), np.sort(order[cut:])


def load(directory: Path, variant: str = "simple", history: int = 50, horizon: int = 50) -> ArrayDataset:
    path = paths.oscillation_file(directory)
    if not path.is_file():
        raise DataError(f"oscillation data not found at {path}; create it with `snakemake {path}` "
                        f"(rule prepare_oscillation)")
    arrays = read_npz(path, KEYS, "delete it and re-create it")
    if arrays["x"].shape != (len(ZETAS), arrays["t"].size) or not np.isin(ZETAS, arrays["zeta"]).all():
        raise DataError(f"{path}: unexpected trajectories {arrays['x'].shape} / damping ratios {arrays['zeta']}")
    if arrays["t"].size < history + horizon:
        raise DataError(f"{path}: {arrays['t'].size} points are fewer than history + horizon = {history + horizon}")
    inputs, targets = examples(arrays, variant, history, horizon)
    train, test = split(len(inputs))
    return ArrayDataset(name="oscillation", path=str(path), x_train=inputs[train], y_train=targets[train],
                        x_test=inputs[test], y_test=targets[test], num_classes=1, task="regression")
