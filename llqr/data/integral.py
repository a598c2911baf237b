"""The HyperbolicLR study's integral-operator task (Kim 2024): learn G(u)(y) = ∫_0^y u(x) dx.

The study generates its data once with a Rust program; ``prepare`` writes the same construction,
seeded, to ``integral.npz`` (a Snakemake rule, no download):

- each input u is a Gaussian random field on ``GRID`` = 1000 points of [0, 1] with the squared-
  exponential kernel k(d) = exp(-d²/2l²), its length scale l ~ U(0.1, 0.4) drawn per sample,
  sampled by circulant embedding (Chan & Wood; ``grf``) with lag i/1000 between neighbours;
- every field is mapped affinely with one map shared by all samples: the mean + 1 sd of the
  per-sample maxima goes to +1 and the mean − 1 sd of the minima to −1 (sd with n − 1);
- G(u)(y) integrates the cubic Hermite spline through the 1000 values (slopes from the quadratic
  through each node and its neighbours, one-sided quadratics at the ends) exactly from 0 to y, at
  ``QUERIES`` = 100 points of [0, 1];
- the sensors are every 10th grid value (100 of them, x = 0 .. 0.991), the grid and the query
  points are linspaces rounded to 3 decimals, as the study's;
- 10,000 samples in generation order, the first 80% train and the rest test (the study's val).

Each example's model input is (2, 100): row 0 the sensor values u, row 1 the query points y (the
same for every example, as in the study); its target the 100 values G(u)(y). The study's generator
is unseeded (thread-local RNG): the fields here are from numpy's seeded generator, so the same
distribution, not the same draws.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import paths
from .arrays import ArrayDataset, read_npz, save_npz_reproducible
from .errors import DataError

SAMPLES = 10_000
TRAIN_FRACTION = 0.8
GRID = 1000  # points of the field on [0, 1]
SENSOR_STRIDE = 10  # every 10th grid value is a sensor: 100 sensors
QUERIES = 100  # query points y of G(u)(y)
LENGTH_SCALE = (0.1, 0.4)  # U(a, b) for each sample's l
PRECISION = 3  # decimals of the rounded grid and query points
SEED = 0  # ours
EMBEDDING_TOLERANCE = 1e-6  # negative eigenvalues smaller than this are set to 0 (the study's)
KEYS = ("u_train", "g_train", "u_test", "g_test", "queries", "sensors", "length_scales")


def rounded_linspace(n: int, precision: int = PRECISION) -> np.ndarray:
    """n points from 0 to 1, each rounded half away from zero to ``precision`` decimals."""
    scale = 10.0 ** precision
    return np.floor(np.linspace(0.0, 1.0, n) * scale + 0.5) / scale


def squared_exponential(d, length: float):
    return np.exp(-np.square(d) / (2.0 * length * length))


def embedding_size(n: int) -> int:
    """The first circulant size tried: the power of two at or above 2(n − 1)."""
    return int(2 ** np.ceil(np.log2(2 * (n - 1))))


def circulant_row(m: int, n: int, length: float) -> np.ndarray:
    """First row of the size-m circulant embedding: k(i/n) for i = 0..m/2, mirrored after."""
    half = squared_exponential(np.arange(m // 2 + 1) / n, length)
    return np.concatenate([half, half[1:m - m // 2][::-1]])


def embedding_sqrt_eigenvalues(n: int, length: float) -> np.ndarray:
    """√ of the embedding's eigenvalues, doubling m until none is below −tolerance (the small
    negative ones are set to 0)."""
    m = embedding_size(n)
    while True:
        eig = np.fft.fft(circulant_row(m, n, length)).real
        if eig.min() > -EMBEDDING_TOLERANCE:
            return np.sqrt(np.maximum(eig, 0.0))
        m *= 2


def grf(sqrt_eig: np.ndarray, z: np.ndarray, n: int) -> np.ndarray:
    """Fields from standard normal draws z (..., m): Re(FFT(√λ · IFFT(z)))[:n], i.e. C^½ z with C
    the circulant covariance, whose first n rows and columns are k(|i − j|/n)."""
    return np.fft.fft(sqrt_eig * np.fft.ifft(z, axis=-1), axis=-1).real[..., :n]


def normalize(fields: np.ndarray) -> np.ndarray:
    """The one affine map of all fields sending mean+sd of the maxima to 1, mean−sd of the minima to −1."""
    maxima, minima = fields.max(axis=1), fields.min(axis=1)
    top = maxima.mean() + maxima.std(ddof=1)
    bottom = minima.mean() - minima.std(ddof=1)
    return (fields - bottom) / (top - bottom) * 2.0 - 1.0


def quadratic_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Slopes at the nodes x of values y (..., n): the derivative of the quadratic through each node
    and its two neighbours, through the first or last three nodes at the ends."""

    def slope(i0, i1, i2, at):
        x0, x1, x2 = x[i0], x[i1], x[i2]
        y0, y1, y2 = y[..., i0], y[..., i1], y[..., i2]
        return (y0 * (2 * at - x1 - x2) / ((x0 - x1) * (x0 - x2)) + y1 * (2 * at - x0 - x2) / ((x1 - x0) * (x1 - x2))
                + y2 * (2 * at - x0 - x1) / ((x2 - x0) * (x2 - x1)))

    n, mid = len(x), np.arange(1, len(x) - 1)
    first = slope(0, 1, 2, x[0])[..., None]
    inner = slope(mid - 1, mid, mid + 1, x[mid])
    last = slope(n - 3, n - 2, n - 1, x[-1])[..., None]
    return np.concatenate([first, inner, last], axis=-1)


def hermite_integral(x: np.ndarray, y: np.ndarray, slopes: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """∫_{x_0}^{t} of the cubic Hermite spline (nodes x, values y (..., n), slopes) for each t in
    ``upper`` (x_0 <= t <= x_{n−1}): the whole pieces below t plus the piece containing t."""
    h = np.diff(x)
    dy = np.diff(y, axis=-1)
    m0, m1 = slopes[..., :-1], slopes[..., 1:]
    c = (3 * dy / h - 2 * m0 - m1) / h
    d = (m0 + m1 - 2 * dy / h) / h ** 2

    def piece(s, k):  # ∫_0^s of a + b·s + c·s² + d·s³ on piece k
        return (y[..., k] * s + m0[..., k] * s ** 2 / 2 + c[..., k] * s ** 3 / 3 + d[..., k] * s ** 4 / 4)

    whole = np.concatenate([np.zeros(y.shape[:-1] + (1,)), np.cumsum(piece(h, np.arange(len(h))), axis=-1)], axis=-1)
    k = np.clip(np.searchsorted(x, upper, side="right") - 1, 0, len(h) - 1)
    return whole[..., k] + piece(upper - x[k], k)


def generate(samples: int = SAMPLES, seed: int = SEED, grid: int = GRID, queries: int = QUERIES,
             stride: int = SENSOR_STRIDE) -> dict:
    """The whole dataset before the split: sensor values u (samples, grid/stride), targets G(u)
    (samples, queries), query points, sensor positions and each sample's length scale (float64)."""
    rng = np.random.default_rng(seed)
    lengths = rng.uniform(*LENGTH_SCALE, size=samples)
    fields = np.empty((samples, grid))
    for i, length in enumerate(lengths):
        sqrt_eig = embedding_sqrt_eigenvalues(grid, float(length))
        fields[i] = grf(sqrt_eig, rng.standard_normal(len(sqrt_eig)), grid)
    u = normalize(fields)
    x, y = rounded_linspace(grid), rounded_linspace(queries)
    targets = hermite_integral(x, u, quadratic_slopes(x, u), y)
    return {"u": u[:, ::stride], "g": targets, "queries": y, "sensors": x[::stride], "length_scales": lengths}


def train_count(samples: int) -> int:
    return int(round(samples * TRAIN_FRACTION))


def prepare(out_path: Path, samples: int = SAMPLES, seed: int = SEED) -> dict:
    """Write the split dataset to ``out_path`` (float32, the study's loader's dtype); returns counts."""
    data = generate(samples, seed)
    cut = train_count(samples)
    f32 = {k: np.asarray(v, np.float32) for k, v in data.items()}
    save_npz_reproducible(Path(out_path), u_train=f32["u"][:cut], g_train=f32["g"][:cut], u_test=f32["u"][cut:],
                          g_test=f32["g"][cut:], queries=f32["queries"], sensors=f32["sensors"],
                          length_scales=data["length_scales"])
    return {"train": cut, "test": samples - cut, "sensors": int(f32["u"].shape[1]), "queries": len(f32["queries"]),
            "seed": seed}


def inputs(u: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """(N, 2, Q) model inputs: the sensor values over the query points of every example."""
    if u.shape[1] != len(queries):
        raise DataError(f"{u.shape[1]} sensors but {len(queries)} query points: the models need as many")
    return np.stack([u, np.broadcast_to(queries, u.shape)], axis=1).astype(np.float32)


def load(directory: Path) -> ArrayDataset:
    path = paths.integral_file(directory)
    if not path.is_file():
        raise DataError(f"integral-operator data not found at {path}; create it with `snakemake {path}` "
                        f"(rule prepare_integral)")
    arrays = read_npz(path, KEYS, "delete it and re-create it")
    queries = arrays["queries"]
    for split in ("train", "test"):
        u, g = arrays[f"u_{split}"], arrays[f"g_{split}"]
        if u.ndim != 2 or g.shape != (len(u), len(queries)) or len(u) == 0:
            raise DataError(f"{path}: {split} arrays have unexpected shapes {u.shape} / {g.shape}")
    return ArrayDataset(name="integral", path=str(path), x_train=inputs(arrays["u_train"], queries),
                        y_train=arrays["g_train"].astype(np.float32), x_test=inputs(arrays["u_test"], queries),
                        y_test=arrays["g_test"].astype(np.float32), num_classes=1, task="regression")
