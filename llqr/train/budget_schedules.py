"""The HyperbolicLR study's schedules (Kim 2024): value as a function of the epoch and the budget.

Every function here is pure: ``fn(epoch)`` for the per-epoch families, ``fn(step)`` for the
per-batch ones (one-cycle, cyclic), with the run's epoch budget ``n`` as a parameter. That is
what the study is about: cosine and polynomial change shape with ``n``; the hyperbolic curves
keep their early path nearly independent of it. Formulas follow PyTorch's closed forms, which the
study's code steps once per epoch.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import optax


def check_hyperbolic(eta0: float, eta_inf: float, n: float, upper: float) -> None:
    """The study's preconditions: the hyperbola branch needs U >= N, and the curve must decay."""
    if upper < n:
        raise ValueError(f"hyperbolic schedule: upper_bound U={upper:g} must be >= the epoch budget N={n:g}")
    if eta_inf >= eta0:
        raise ValueError(f"hyperbolic schedule: eta_min={eta_inf:g} must be below the initial value {eta0:g}")


def hyperbola(x, n, upper):
    """h(x; N, U) = sqrt((N-x)(2U-N-x))/U: 1 at x=0 only when U=N, and 0 at x=N; below its
    asymptote 1 - x/U, which does not depend on N (the study's Proposition 1 figure)."""
    x = jnp.clip(jnp.asarray(x, jnp.float32), 0.0, n)
    return jnp.sqrt(jnp.maximum((n - x) * (2.0 * upper - n - x), 0.0)) / upper


def hyperbolic(eta0: float, eta_inf: float, n: float, upper: float):
    """H: eta0 + (eta0 - eta_inf)(h(x) - h(0)); reaches eta_inf at x=N iff U=N."""
    check_hyperbolic(eta0, eta_inf, n, upper)
    h0 = math.sqrt(n * (2.0 * upper - n)) / upper
    return lambda x: eta0 + (eta0 - eta_inf) * (hyperbola(x, n, upper) - h0)


def exp_hyperbolic(eta0: float, eta_inf: float, n: float, upper: float):
    """EH: eta0 (eta0/eta_inf)^(h(x) - h(0)), the same branch on a log scale."""
    check_hyperbolic(eta0, eta_inf, n, upper)
    h0 = math.sqrt(n * (2.0 * upper - n)) / upper
    ratio = math.log(eta0 / eta_inf)
    return lambda x: eta0 * jnp.exp(ratio * (hyperbola(x, n, upper) - h0))


def warmup_epochs(n: float) -> int:
    """The study's warmup length: a tenth of the budget, at least one epoch."""
    return max(1, int(n) // 10)


def with_linear_warmup(start: float, peak: float, warm: int, after):
    """``start`` -> ``peak`` linearly over ``warm`` epochs, then ``after(x - warm)``."""

    def fn(x):
        x = jnp.asarray(x, jnp.float32)
        ramp = start + (peak - start) * x / warm
        return jnp.where(x < warm, ramp, after(jnp.maximum(x - warm, 0.0)))

    return fn


def warmup_hyperbolic(eta0, eta_inf, n, upper, exponential: bool = False):
    """WH/WEH: warm up from eta_inf to eta0, then H/EH over the remaining N - warmup epochs."""
    check_hyperbolic(eta0, eta_inf, n, upper)
    warm = warmup_epochs(n)
    rest = (exp_hyperbolic if exponential else hyperbolic)(eta0, eta_inf, n - warm, upper)
    return with_linear_warmup(eta_inf, eta0, warm, rest)


def cosine(eta0: float, eta_min: float, n: float):
    """CosineAnnealingLR(T_max=N): the whole budget is one half-period."""

    def fn(x):
        x = jnp.clip(jnp.asarray(x, jnp.float32), 0.0, n)
        return eta_min + (eta0 - eta_min) * 0.5 * (1.0 + jnp.cos(math.pi * x / n))

    return fn


def warmup_cosine(eta0: float, eta_min: float, n: float, start_factor: float):
    """WC: LinearLR(start_factor -> 1) over N//10 epochs, then cosine over the rest."""
    warm = warmup_epochs(n)
    return with_linear_warmup(start_factor * eta0, eta0, warm, cosine(eta0, eta_min, max(n - warm, 1.0)))


def polynomial(eta0: float, n: float, power: float):
    """PolynomialLR(total_iters=N): eta0 (1 - x/N)^power. The base is floored at 0: compiled, x/N
    becomes x·(1/N), and 1 - N·(1/N) is -1.5e-8 in float32 at x = N, whose fractional power is NaN."""
    return lambda x: eta0 * jnp.maximum(1.0 - jnp.clip(jnp.asarray(x, jnp.float32), 0.0, n) / n, 0.0) ** power


def exponential(eta0: float, gamma: float):
    return lambda x: eta0 * gamma ** jnp.asarray(x, jnp.float32)


def linear_decay(eta0: float, n: float, end_factor: float):
    """LinearLR(1 -> end_factor, total_iters=N)."""
    return lambda x: eta0 * (1.0 + (end_factor - 1.0) * jnp.clip(jnp.asarray(x, jnp.float32), 0.0, n) / n)


def step_decay(eta0: float, step_size: float, gamma: float):
    """StepLR: times gamma every ``step_size`` epochs."""
    return lambda x: eta0 * gamma ** jnp.floor(jnp.asarray(x, jnp.float32) / step_size)


def cyclic_triangular(eta_min: float, eta_max: float, step_up: float):
    """CyclicLR(mode='triangular'), per batch: eta_min -> eta_max in ``step_up`` steps and back."""

    def fn(t):
        t = jnp.asarray(t, jnp.float32)
        cycle = jnp.floor(1.0 + t / (2.0 * step_up))
        x = jnp.abs(t / step_up - 2.0 * cycle + 1.0)
        return eta_min + (eta_max - eta_min) * jnp.maximum(0.0, 1.0 - x)

    return fn


def per_epoch(fn, spe: float, n: float):
    """A per-epoch schedule on the loop's step clock: constant within an epoch, as the study
    steps its PyTorch schedulers once per epoch (the epoch index is capped at the budget)."""
    return lambda step: fn(jnp.clip(jnp.floor(jnp.asarray(step, jnp.float32) / spe), 0.0, n))


def build_budget_schedule(name: str, p: dict, base: float, total_epochs: float, spe: float):
    """One of the study's families on the step clock, or None if ``name`` is not one of them."""
    n = float(total_epochs)
    total_steps = max(int(n * spe), 1)
    if name == "one_cycle":
        return optax.cosine_onecycle_schedule(total_steps, base, p["pct_start"], p["div_factor"],
                                              p["final_div_factor"])
    if name == "cyclic":
        return cyclic_triangular(p["eta_min"], base, max(p["step_up"] * total_steps, 1.0))
    epoch_fns = {
        "polynomial": lambda: polynomial(base, n, p["power"]),
        "cosine": lambda: cosine(base, p["eta_min"], n),
        "exponential": lambda: exponential(base, p["gamma"]),
        "linear_decay": lambda: linear_decay(base, n, p["end_factor"]),
        "step": lambda: step_decay(base, p["step_size"] or max(1, int(n) // 3), p["gamma"]),
        "hyperbolic": lambda: hyperbolic(base, p["eta_min"], n, p["upper_bound"]),
        "exp_hyperbolic": lambda: exp_hyperbolic(base, p["eta_min"], n, p["upper_bound"]),
        "warmup_hyperbolic": lambda: warmup_hyperbolic(base, p["eta_min"], n, p["upper_bound"]),
        "warmup_exp_hyperbolic": lambda: warmup_hyperbolic(base, p["eta_min"], n, p["upper_bound"], True),
        "warmup_cosine": lambda: warmup_cosine(base, p["eta_min"], n, p["start_factor"]),
    }
    if name not in epoch_fns:
        return None
    return per_epoch(epoch_fns[name](), spe, n)
