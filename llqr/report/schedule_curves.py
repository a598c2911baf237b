"""The HyperbolicLR study's schedule analyses as numbers, from the runner's own schedule code.

Every value comes from ``llqr.train.schedules.build_schedule`` on the loop's step clock, so a curve is
what a run with that ``lr_scheduler`` and epoch budget trains with (per-epoch families are constant
within an epoch, as the study steps its PyTorch schedulers once per epoch):

* ``step_values``: the value at every training step (once per schedule and budget, one compiled call);
* ``lr_curve``: those values against epochs (step / steps_per_epoch);
* ``epoch_values``: the value at the first step of epochs 0..N (epoch N: where the schedule ends);
* ``decay_rate``: -dη/dt per epoch, the change between consecutive epoch starts
  (paper/scripts/03_decay_rate_analysis.py plots it on a log axis);
* ``lr_integral``: ∫η dt over the run in epochs, the sum of the step values / steps_per_epoch
  (paper/scripts/04_cumulative_lr_budget.py: the cumulative learning-rate budget);
* ``early_gap``: how far the curves of different budgets part over the shortest budget's epochs,
  max |η_N(t) − η_Nmax(t)| / η0 (the study's epoch-insensitivity, as one number);
* ``hyperbola_curves``: h(n; N, U) per budget and its N-free asymptote 1 − n/U
  (paper/scripts/02_prop_1.py, Proposition 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..train.budget_schedules import hyperbola
from ..train.schedules import build_schedule


def step_values(runs: list, lr: float, spe: int) -> list:
    """Per (setting, budget N) in ``runs``: the schedule at steps 0 .. N·spe (the run's steps, then
    the step where it would end). The runner calls a schedule with one step count at a time; here
    all of them are vmapped over one step range and compiled as one call (a compile per schedule
    would dominate the time)."""
    fns = [build_schedule(setting, lr, float(budget), float(spe)) for setting, budget in runs]
    steps = jnp.arange(max(budget for _, budget in runs) * spe + 1, dtype=jnp.int32)
    out = jax.jit(lambda s: [jax.vmap(fn)(s) for fn in fns])(steps)
    return [np.asarray(v[: budget * spe + 1], dtype=np.float64) for v, (_, budget) in zip(out, runs)]


def lr_curve(values: np.ndarray, spe: int) -> tuple:
    """(epochs, values) at every step the run takes (the last value, at N, is not a step)."""
    run = values[:-1]
    return np.arange(run.size) / spe, run


def epoch_values(values: np.ndarray, spe: int) -> np.ndarray:
    """The value at the first step of each epoch 0..N (N + 1 values)."""
    return values[::spe]


def decay_rate(values: np.ndarray, spe: int) -> np.ndarray:
    """-dη/dt per epoch over epochs 0..N−1: η(t) − η(t + 1) at the epoch starts."""
    return -np.diff(epoch_values(values, spe))


def lr_integral(values: np.ndarray, spe: int) -> float:
    """∫η dt in epochs over the run: every step's value times its 1/spe of an epoch."""
    return float(lr_curve(values, spe)[1].sum() / spe)


def values_at(values: np.ndarray, spe: int, epochs: list) -> list:
    """η at the first step of each of ``epochs`` (NaN for an epoch the run does not reach)."""
    at = epoch_values(values, spe)
    return [float(at[e]) if e < at.size - 1 else float("nan") for e in epochs]


def early_gap(by_budget: dict, spe: int, lr: float) -> float:
    """max over budgets N and the shortest budget's epochs t of |η_N(t) − η_Nmax(t)| / η0
    (``by_budget``: budget -> ``step_values``)."""
    shortest = min(by_budget)
    ref = epoch_values(by_budget[max(by_budget)], spe)[:shortest]
    gaps = [np.abs(epoch_values(v, spe)[:shortest] - ref).max() for v in by_budget.values()]
    return float(max(gaps) / lr)


def hyperbola_curves(budgets: list, upper: float, points: int = 200) -> tuple:
    """[(n, h(n; N, U)) per budget N] and the asymptote (n, 1 − n/U) over 0..U."""
    curves = []
    for n_max in budgets:
        n = np.linspace(0.0, float(n_max), points)
        curves.append((n, np.asarray(hyperbola(n, float(n_max), float(upper)), dtype=np.float64)))
    n = np.linspace(0.0, float(upper), points)
    return curves, (n, 1.0 - n / upper)
