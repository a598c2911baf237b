"""The HyperbolicLR study's consistency measures, as pure functions of numbers.

* ``power_law_fit``: final loss vs epoch budget, L(N) = a·N^b fitted by least squares in log-log
  space; R² (also in log space) says how well one power law explains the budgets, the study's
  measure of a schedule improving consistently with more epochs.
* ``slcd``: the smoothed learning-curve difference of two runs: both validation curves smoothed
  with a Savitzky–Golay filter (window 9), then the mean of |x − y| / (x + y) over the steps
  the shorter run has. Small values: the longer budget retraces the shorter one's path.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.signal import savgol_filter

SAVGOL_WINDOW = 9
SAVGOL_ORDER = 2


def power_law_fit(budgets, values) -> dict:
    """{a, b, r2, n} of values ≈ a·budgets^b over the finite positive pairs (NaN when < 2 pairs;
    r2 NaN when the values are all equal, where log-space variance is zero)."""
    n_arr = np.asarray(budgets, dtype=float)
    v_arr = np.asarray(values, dtype=float)
    ok = np.isfinite(n_arr) & np.isfinite(v_arr) & (n_arr > 0) & (v_arr > 0)
    x, y = np.log(n_arr[ok]), np.log(v_arr[ok])
    out = {"a": math.nan, "b": math.nan, "r2": math.nan, "n": int(ok.sum())}
    if ok.sum() < 2 or np.ptp(x) == 0:
        return out
    b, log_a = np.polyfit(x, y, 1)
    residual = y - (log_a + b * x)
    total = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(residual**2)) / total if total > 0 else math.nan
    out.update(a=float(np.exp(log_a)), b=float(b), r2=r2)
    return out


def smooth(values, window: int = SAVGOL_WINDOW, order: int = SAVGOL_ORDER) -> np.ndarray:
    """Savitzky–Golay smoothing; a curve shorter than the window uses the longest odd window it
    has, and one too short for the polynomial order is returned as is."""
    arr = np.asarray(values, dtype=float)
    w = min(window, arr.size if arr.size % 2 else arr.size - 1)
    if w <= order:
        return arr.copy()
    return savgol_filter(arr, w, order)


def slcd(steps_a, values_a, steps_b, values_b) -> float:
    """SLCD of two curves given as (steps, values): smooth each whole curve, then average
    |x − y| / (x + y) over the steps both have (the shorter curve's, on one evaluation cadence)."""
    sa, sb = smooth(values_a), smooth(values_b)
    a = dict(zip(np.asarray(steps_a).tolist(), sa))
    b = dict(zip(np.asarray(steps_b).tolist(), sb))
    common = sorted(set(a) & set(b))
    if not common:
        return math.nan
    x = np.array([a[s] for s in common])
    y = np.array([b[s] for s in common])
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.abs(x - y) / (x + y)
    terms = terms[np.isfinite(terms)]
    return float(terms.mean()) if terms.size else math.nan


def slcd_matrix(curves: list) -> np.ndarray:
    """The K×K matrix over K curves [(steps, values), ...] in budget order: SLCD for i < j,
    mirrored below the diagonal, 0 on it (NaN where a curve is missing: None)."""
    k = len(curves)
    out = np.full((k, k), math.nan)
    for i in range(k):
        if curves[i] is not None:
            out[i, i] = 0.0
        for j in range(i + 1, k):
            if curves[i] is not None and curves[j] is not None:
                out[i, j] = out[j, i] = slcd(*curves[i], *curves[j])
    return out


def upper_mean(matrix: np.ndarray) -> float:
    """Mean over the pairs i < j: one number per schedule for ranking."""
    vals = matrix[np.triu_indices(matrix.shape[0], 1)]
    vals = vals[np.isfinite(vals)]
    return float(vals.mean()) if vals.size else math.nan
