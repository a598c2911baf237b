"""The SVAG study's triangle and cosine LR schedules (llqr/train/svag_schedules.py): hand-computed
points, the study's own multiplicative per-epoch stepping, and SVAG's l-stretch."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llqr.config.schedule_families import default_schedule
from llqr.optim.svag import svag_schedule
from llqr.train.schedules import build_schedule

PEAK, T, SPE = 0.8, 160.0, 10.0  # the study's base LR and budget; 10 steps per epoch keeps steps exact


def lr_at_epoch(fn, epoch: int, spe: float = SPE) -> float:
    return float(fn(int(epoch * spe)))


def study_stepping(start_lr: float, factors: list[float], epochs: int) -> list[float]:
    """The LR of each epoch as the study's LR_WD_Scheduler sets it: at the start of epoch e (every
    epoch is in ``schedule``), lr *= lr_decay_factors[e]."""
    lr, out = start_lr, []
    for epoch in range(epochs):
        lr *= factors[epoch]
        out.append(lr)
    return out


def study_triangle(lr: float, epochs: int, lr_min: float = 1e-4, heights=(1.0, 0.5)) -> list[float]:
    """tri_lr of hparams/cifar10_hparams_dict.py: ratios of tri_value, optimizer started at lr_min."""
    cycles = len(heights)

    def tri_value(epoch):
        ratio = abs(epochs // (2 * cycles) - epoch % (epochs // cycles)) / (epochs / (2 * cycles))
        return ((lr - lr_min) * (1 - ratio) + lr_min) * heights[min(epoch // (epochs // cycles), cycles - 1)]

    return study_stepping(lr_min, [tri_value(e + 1) / tri_value(e) for e in range(epochs)], epochs)


def study_cosine(lr: float, epochs: int, lr_min: float = 1e-4) -> list[float]:
    """cos_lr of hparams/cifar10_hparams_dict.py: ratios of cos_value, optimizer started at lr."""

    def cos_value(epoch):
        return (lr - lr_min) * (1 + math.cos(epoch * math.pi / epochs)) / 2.0 + 0.001

    return study_stepping(lr, [cos_value(e + 1) / cos_value(e) for e in range(epochs)], epochs)


def triangle(**params):
    return build_schedule({**default_schedule("svag_triangle"), **params}, PEAK, T, SPE)


def cosine(**params):
    return build_schedule({**default_schedule("svag_cosine"), **params}, PEAK, T, SPE)


def test_triangle_at_hand_computed_points():
    fn = triangle()
    up = (PEAK - 1e-4) / 40  # one epoch of the 40-epoch ramp
    expected = {
        0: 1e-4 + up,  # the study samples one epoch ahead: v(1)
        39: PEAK,  # first peak, v(40)
        40: 1e-4 + 39 * up,
        78: 1e-4 + up,
        79: 1e-4 * 0.5,  # end of cycle 1: v(80) is already in cycle 2 (height 0.5)
        80: (1e-4 + up) * 0.5,
        119: PEAK * 0.5,  # second peak
        159: 1e-4 * 0.5,  # end of cycle 2
    }
    for epoch, value in expected.items():
        np.testing.assert_allclose(lr_at_epoch(fn, epoch), value, rtol=1e-6, err_msg=f"epoch {epoch}")
    # per epoch: constant within an epoch
    assert float(fn(39 * 10)) == float(fn(39 * 10 + 9)) != float(fn(40 * 10))


@pytest.mark.parametrize("heights", [[1.0, 0.5], [2.0, 1.0, 0.5]])
def test_triangle_is_the_studys_multiplicative_stepping(heights):
    epochs = 160 if len(heights) == 2 else 120
    fn = build_schedule({"name": "svag_triangle", "eta_min": 1e-4, "heights": heights}, PEAK, float(epochs), SPE)
    ours = [lr_at_epoch(fn, e) for e in range(epochs)]
    np.testing.assert_allclose(ours, study_triangle(PEAK, epochs, heights=heights), rtol=1e-5)


def test_cosine_endpoints_and_the_studys_stepping():
    fn = cosine()
    start = PEAK - 1e-4 + 0.001  # v(0)
    first = (PEAK - 1e-4) * (1 + math.cos(math.pi / T)) / 2 + 0.001
    np.testing.assert_allclose(lr_at_epoch(fn, 0), PEAK * first / start, rtol=1e-6)
    np.testing.assert_allclose(lr_at_epoch(fn, 159), PEAK * 0.001 / start, rtol=1e-5)  # v(T) = the offset
    np.testing.assert_allclose(lr_at_epoch(fn, 160), PEAK * 0.001 / start, rtol=1e-5)  # capped past the budget
    ours = [lr_at_epoch(fn, e) for e in range(160)]
    np.testing.assert_allclose(ours, study_cosine(PEAK, 160), rtol=1e-5)


@pytest.mark.parametrize("family", ["svag_triangle", "svag_cosine"])
@pytest.mark.parametrize("l", [1, 4])
def test_svag_stretches_by_l(family, l):
    """The study's sde1: the schedule's epochs times 2l at batch 2B (l times the steps of a base
    epoch) at LR/l; the runner wraps any schedule in svag_schedule for noise=svag."""
    base = build_schedule(default_schedule(family), PEAK, T, SPE)
    stretched = svag_schedule(base, l)
    for epoch in (0, 39, 79, 80, 119, 159):
        first, last = int(epoch * SPE * l), int((epoch + 1) * SPE * l) - 1  # the SVAG steps of base epoch `epoch`
        for step in (first, last):
            np.testing.assert_allclose(float(stretched(step)), lr_at_epoch(base, epoch) / l, rtol=1e-6)
    if l > 1:  # the base schedule's own step clock would have left this epoch long before
        assert float(stretched(int(39 * SPE * l))) != float(base(int(39 * SPE * l))) / l


def test_triangle_refuses_partial_cycles():
    from llqr.config import ConfigError, build_config

    with pytest.raises(ValueError, match="whole multiple"):
        build_schedule(default_schedule("svag_triangle"), PEAK, 150.0, SPE)
    with pytest.raises(ConfigError, match="whole multiple"):
        build_config({"lr_scheduler": {"name": "svag_triangle"}, "total_epochs": 150})
    with pytest.raises(ConfigError, match="positive"):
        build_config({"lr_scheduler": {"name": "svag_triangle", "heights": [1.0, 0.0]}, "total_epochs": 160})
