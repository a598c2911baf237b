"""The SVAG study's triangle and cosine learning-rate schedules (Li, Malladi & Arora 2021,
configs ``preresnet32_tri_sde1_k*`` / ``vgg16_tri_sde1_k*`` and ``preresnet32_cos_sde1_k*`` /
``vgg16_cos_sde1_k*``), as closed forms of the epoch index.

The study writes both as per-epoch multiplicative decays (``lr_decay_factors`` on a schedule of
every epoch, applied by its ``LR_WD_Scheduler`` at the *start* of each epoch), so during epoch e
(0-based) the LR is the start value times v(e+1)/v(0): the curve is sampled one epoch ahead, and
is constant within an epoch. The closed forms below are that product, telescoped.

SVAG stretch: the study's ``sde1`` multiplies the epochs and the schedule by 2l at twice the batch
(l times the steps of the base run) and divides the LR by l, leaving the decay factors alone; so
SVAG step k sees LR(base epoch of k/l)/l, which is what the runner's ``svag.svag_schedule`` does
to any schedule built here (``noise: svag``).
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from .budget_schedules import per_epoch


def _epoch_ahead(x, n: float):
    """The study's sample point for epoch x: x + 1, with x capped at the last epoch n − 1."""
    return jnp.clip(jnp.asarray(x, jnp.float32), 0.0, n - 1.0) + 1.0


def check_triangle(n: float, heights) -> None:
    """The study's precondition (``assert T % (2*cycles) == 0``) and non-empty positive heights."""
    if not heights or min(heights) <= 0:
        raise ValueError(f"svag_triangle: heights {list(heights)} must be a non-empty list of positive numbers")
    if n != int(n) or int(n) % (2 * len(heights)):
        raise ValueError(f"svag_triangle: the epoch budget {n:g} must be a whole multiple of 2 x {len(heights)} "
                         f"cycles")


def triangle(peak: float, eta_min: float, heights, n: float):
    """LR of epoch x for the study's ``tri_lr``: ``len(heights)`` triangles of T/c epochs each
    (T = the epoch budget ``n``, c cycles), rising linearly from ``eta_min`` to the cycle's peak
    over T/(2c) epochs and back, cycle i scaled by heights[i] / heights[0]:

        v(x) = ((peak − eta_min)(1 − |T/(2c) − x mod T/c| / (T/(2c))) + eta_min) · heights[min(x // (T/c), c−1)]
        LR(x) = v(x + 1) / heights[0]       (the study starts its optimizer at v(0) = eta_min·heights[0])

    The study (``hparams/cifar10_hparams_dict.py``, ``tri_lr``): peak = the base run's LR 0.8,
    eta_min 1e-4, heights [1.0, 0.5], T = 160 epochs at batch 128 (two cycles of 80: up 40, down
    40), SGD without momentum, weight decay 5e-4. So epoch 0 has 0.0200975, epoch 39 the peak 0.8,
    epoch 79 5e-5 (already at the second height), epoch 119 the second peak 0.4, epoch 159 5e-5.
    """
    check_triangle(n, heights)
    total, cycles = int(n), len(heights)
    half, period = total // (2 * cycles), total // cycles
    scale = jnp.asarray(heights, jnp.float32) / heights[0]

    def fn(x):
        e = _epoch_ahead(x, n)
        ratio = jnp.abs(half - jnp.mod(e, period)) / half
        cycle = jnp.minimum(jnp.floor(e / period), cycles - 1).astype(jnp.int32)
        return ((peak - eta_min) * (1.0 - ratio) + eta_min) * scale[cycle]

    return fn


def cosine(peak: float, eta_min: float, offset: float, n: float):
    """LR of epoch x for the study's ``cos_lr``: a half cosine over the epoch budget T = ``n``,

        v(x) = (peak − eta_min)(1 + cos(π x / T)) / 2 + offset
        LR(x) = peak · v(x + 1) / v(0)

    The study (``cos_lr``): peak = the base run's LR 0.8, eta_min 1e-4, offset 0.001 (a constant
    of its formula, not eta_min), T = 160 epochs at batch 128, SGD without momentum, weight decay
    5e-4; so epoch 0 has 0.8·v(1)/0.8009 ≈ 0.79985 and the last epoch 0.8·0.001/0.8009 ≈ 9.99e-4.
    """
    start = peak - eta_min + offset

    def fn(x):
        e = _epoch_ahead(x, n)
        return peak * ((peak - eta_min) * 0.5 * (1.0 + jnp.cos(math.pi * e / n)) + offset) / start

    return fn


def build_svag_schedule(name: str, p: dict, base: float, total_epochs: float, spe: float):
    """The study's ``svag_triangle`` / ``svag_cosine`` on the step clock (constant within an
    epoch of ``spe`` steps), peaking at ``base``; None for other families."""
    n = float(total_epochs)
    if name == "svag_triangle":
        return per_epoch(triangle(base, p["eta_min"], p["heights"], n), spe, n)
    if name == "svag_cosine":
        return per_epoch(cosine(base, p["eta_min"], p["offset"], n), spe, n)
    return None
