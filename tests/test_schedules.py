"""Schedule families against the formulas of the training-surface spec (section 3).

Expected values are computed here in plain Python from the spec's formulas, not through
optax or the module's helpers, so a wrong reuse of an optax builder (off-by-one boundary,
clamp where the spec has none, epoch/step confusion) shows up as a mismatch.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llqr.config import SCHEDULE_FAMILIES, ConfigError, build_config
from llqr.train.schedules import build_schedule

SPE = 390.625  # CIFAR-10 at batch 128: a fractional steps-per-epoch, as in the reference
RTOL = 1e-5  # schedules compute in float32
# optax's linear pieces compute (init - end) * (1 - frac) + end, so near a small value the
# error is float32 rounding of the *largest* value involved; tolerate that, relative to the scale.
EPS32 = 1.2e-7


def sched(name: str, **params) -> dict:
    """A validated schedule mapping, defaults filled, as the trainer would receive it."""
    return build_config({"lr_scheduler": {"name": name, **params}}).lr_scheduler


def check(fn, expected, steps):
    """fn(step) for Python-int steps against expected(step), within float32 precision."""
    got = np.array([float(fn(s)) for s in steps])
    want = np.array([expected(s) for s in steps])
    atol = EPS32 * np.max(np.abs(want))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=atol, err_msg=f"steps {list(steps)}")


def cosine_ref(base, eta_min, m, clamp):
    def f(s):
        t = min(s, m) if clamp else s
        return eta_min + (base - eta_min) * 0.5 * (1 + math.cos(math.pi * t / m))

    return f


def test_constant():
    fn = build_schedule(sched("constant"), 0.05, 200.0, SPE)
    check(fn, lambda s: 0.05, [0, 1, 1000, 10**6])


def test_cosine_annealing_cycles_past_t_max():
    base, t_max = 0.1, 3.3
    m = SPE * t_max  # 1289.0625: not a whole step
    fn = build_schedule(sched("cosine_annealing", t_max=t_max), base, 10.0, SPE)
    ref = cosine_ref(base, 0.0, m, clamp=False)
    steps = [0, 1, 100, 644, 1289, 1290, 1900, 2578, 3000]
    check(fn, ref, steps)
    # Periodic, not clamped: past M the value climbs back to base by 2M.
    np.testing.assert_allclose(float(fn(1.5 * m)), float(fn(0.5 * m)), rtol=RTOL)
    np.testing.assert_allclose(float(fn(2 * m)), base, rtol=RTOL)
    assert float(fn(2000)) > float(fn(1300))


def test_cosine_annealing_no_cycle_clamps_and_can_rise():
    # The IWSLT ema preset: base 0.8 rising to eta_min 0.925 over 133 epochs, then held.
    base, eta_min, t_max = 0.8, 0.925, 133.0
    m = SPE * t_max
    fn = build_schedule(sched("cosine_annealing", t_max=t_max, eta_min=eta_min, cycle=False), base, 200.0, SPE)
    check(fn, cosine_ref(base, eta_min, m, clamp=True), [0, 1, 10_000, 25_976, 25_977, 51_953, 51_954, 70_000])
    np.testing.assert_allclose(float(fn(0)), base, rtol=RTOL)
    np.testing.assert_allclose(float(fn(10**6)), eta_min, rtol=RTOL)


def test_cosine_decay_with_floor():
    base, eta_min, t_max = 0.05, 0.001, 2.5
    m = SPE * t_max  # 976.5625
    fn = build_schedule(sched("cosine_decay_with_floor", t_max=t_max, eta_min=eta_min), base, 10.0, SPE)
    check(fn, cosine_ref(base, eta_min, m, clamp=True), [0, 1, 488, 976, 977, 1500, 1953, 10_000])
    np.testing.assert_allclose(float(fn(1953)), eta_min, rtol=RTOL)  # 2M: held, not back at base


def test_warmup_cosine_decay():
    init, peak, end = 1e-5, 0.1, 1e-4
    we, t_max = 2.5, 20.5
    w = int(we * SPE)  # 976 (976.5625 truncated, not rounded)
    d = int(SPE * t_max)  # 8007 (of 8007.8125): decay_steps includes the warmup

    def ref(s):
        if s < w:
            return init + (peak - init) * s / w
        if s <= d:
            return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * (s - w) / (d - w)))
        return end

    fn = build_schedule(
        sched("warmup_cosine_decay", init_value=init, warmup_epochs=we, t_max=t_max, eta_min=end), peak, 30.0, SPE
    )
    check(fn, ref, [0, 1, 488, 975, 976, 977, 4491, 8006, 8007, 8008, 20_000])
    np.testing.assert_allclose(float(fn(0)), init, rtol=RTOL, atol=EPS32 * peak)
    np.testing.assert_allclose(float(fn(w)), peak, rtol=RTOL)
    np.testing.assert_allclose(float(fn(d)), end, rtol=RTOL)


@pytest.mark.parametrize(
    "total_epochs, ratio, init",
    [(200.0, 0.2, 5e-4), (3.0, 0.1, 0.0), (200.0, 1.0, 0.0)],  # plr preset, fractional W, ema over the run
)
def test_step_warmup(total_epochs, ratio, init):
    base = 0.9
    w = total_epochs * SPE * ratio  # not truncated: 117.1875 in the second case
    fn = build_schedule(sched("step_warmup", ratio=ratio, init_value=init), base, total_epochs, SPE)
    steps = [0, 1, int(w / 2), math.floor(w), math.ceil(w), int(2 * w) + 5]
    check(fn, lambda s: init + (base - init) * min(s / w, 1.0), steps)


def test_linear():
    base, factor, te, tb = 2.0, 0.01, 2.0, 1.5
    begin, length = int(SPE * tb), int(SPE * te)  # 585, 781

    def ref(s):
        frac = min(max(s - begin, 0) / length, 1.0)
        return base + (factor * base - base) * frac

    fn = build_schedule(sched("linear", factor=factor, transition_epochs=te, transition_begin=tb), base, 10.0, SPE)
    check(fn, ref, [0, 584, 585, 586, 975, 1365, 1366, 1367, 5000])
    np.testing.assert_allclose(float(fn(begin + length)), factor * base, rtol=RTOL)


def test_piecewise_constant_fractional_boundaries():
    base = 100.0  # precond update period
    table = {15: 10.0, 20: 0.5}
    bounds = {SPE * e: s for e, s in table.items()}  # 5859.375, 7812.5

    def ref(s):
        return base * math.prod(scale for b, scale in bounds.items() if s >= b)

    fn = build_schedule(sched("piecewise_constant", boundaries_and_scales=table), base, 50.0, SPE)
    check(fn, ref, [0, 5859, 5860, 7812, 7813, 50_000])
    assert float(fn(5859)) == pytest.approx(100.0) and float(fn(5860)) == pytest.approx(1000.0)


def test_piecewise_constant_scale_applies_at_the_boundary():
    spe = 390.0  # whole-step boundary 5850: the scale applies from that step on (step >= boundary)
    fn = build_schedule(sched("piecewise_constant", boundaries_and_scales={15: 10}), 100.0, 50.0, spe)
    check(fn, lambda s: 100.0 * (10.0 if s >= 5850 else 1.0), [0, 5849, 5850, 5851])


def test_piecewise_constant_empty_is_constant():
    fn = build_schedule(sched("piecewise_constant"), 0.3, 50.0, SPE)
    check(fn, lambda s: 0.3, [0, 10, 10**6])


@pytest.mark.parametrize("ratio", [0.05, 0.0])
def test_warmup_piecewise_decay(ratio):
    base, init, factor, total = 0.4, 1e-6, 0.1, 100.0
    epochs = [30.0, 70.0, 90.0]
    wm = int(ratio * int(total * SPE))  # int(0.05 * 39062) = 1953
    bounds = [int(SPE * e) for e in epochs]  # 11718, 27343, 35156: global steps

    def ref(s):
        if s < wm:
            return init + (base - init) * s / wm
        return base * factor ** sum(s >= b for b in bounds)

    fn = build_schedule(
        sched("warmup_piecewise_decay", boundaries=epochs, factor=factor, warmup_ratio=ratio, init_value=init),
        base,
        total,
        SPE,
    )
    steps = [0, 1, 976, 1952, 1953, 1954, 11_717, 11_718, 11_719, 27_342, 27_343, 35_155, 35_156, 40_000]
    check(fn, ref, steps)
    if ratio:
        np.testing.assert_allclose(float(fn(0)), init, rtol=RTOL, atol=EPS32 * base)
    np.testing.assert_allclose(float(fn(wm)), base, rtol=RTOL)


def test_inverse_sqrt():
    base, w, init = 5e-4, 4000, 1e-7

    def ref(s):
        return init + (base - init) * s / w if s < w else base * math.sqrt(w) / math.sqrt(s)

    fn = build_schedule(sched("inverse_sqrt", warmup_steps=w, init_value=init), base, 60.0, SPE)
    check(fn, ref, [0, 1, 2000, 3999, 4000, 4001, 16_000, 123_456])
    np.testing.assert_allclose(float(fn(w)), base, rtol=RTOL)
    np.testing.assert_allclose(float(fn(4 * w)), base / 2, rtol=RTOL)


def ramp_ref(init, target, a, e, c, every, delta):
    def f(s):
        p = min(max((s - a) / (e - a), 0.0), 1.0)
        ups = math.floor((s - c) / every) + 1 if s >= c else 0
        return init + (target - init) * 0.5 * (1 - math.cos(math.pi * p)) + delta * ups

    return f


def test_cosine_ramp_step_increase_defaults_target_base():
    base = 0.3  # rho preset shape (.005 -> base, a 4000, e 150k, +.05 every 50k from 200k); 0.3 != any default
    fn = build_schedule(sched("cosine_ramp_step_increase"), base, 100.0, SPE)
    ref = ramp_ref(0.005, base, 4000, 150_000, 200_000, 50_000, 0.05)
    steps = [0, 3999, 4000, 4001, 77_000, 149_999, 150_000, 199_999, 200_000, 249_999, 250_000, 400_000]
    check(fn, ref, steps)
    np.testing.assert_allclose(float(fn(150_000)), base, rtol=RTOL)
    np.testing.assert_allclose(float(fn(200_000)), base + 0.05, rtol=RTOL)
    np.testing.assert_allclose(float(fn(250_000)), base + 0.10, rtol=RTOL)


def test_cosine_ramp_step_increase_explicit_target():
    params = dict(init_value=0.01, target=0.5, ramp_start=10, ramp_end=110)
    params.update(step_start=150, step_every=7, step_delta=0.1)
    fn = build_schedule(sched("cosine_ramp_step_increase", **params), 99.0, 1.0, SPE)  # base ignored
    ref = ramp_ref(0.01, 0.5, 10, 110, 150, 7, 0.1)
    check(fn, ref, [0, 10, 11, 60, 109, 110, 149, 150, 156, 157, 200])


SAMPLE_PARAMS = {
    "constant": {},
    "cosine_annealing": {"t_max": 3.3},
    "cosine_decay_with_floor": {"t_max": 2.5, "eta_min": 1e-3},
    "warmup_cosine_decay": {"warmup_epochs": 1.0, "t_max": 4.0},
    "step_warmup": {"ratio": 0.1},
    "linear": {"transition_epochs": 1.0, "transition_begin": 0.5},
    "piecewise_constant": {"boundaries_and_scales": {1: 0.1, 2: 0.1}},
    "warmup_piecewise_decay": {"boundaries": [1, 2]},
    "inverse_sqrt": {"warmup_steps": 100},
    "cosine_ramp_step_increase": {"ramp_start": 10, "ramp_end": 500, "step_start": 800, "step_every": 100},
    # the HyperbolicLR study's families (budget N = 3 epochs in these tests)
    "polynomial": {"power": 2.0},
    "cosine": {"eta_min": 1e-3},
    "exponential": {"gamma": 0.5},
    "linear_decay": {"end_factor": 0.1},
    "step": {"step_size": 1.0},
    "one_cycle": {"pct_start": 0.25},
    "cyclic": {"step_up": 0.13, "eta_min": 1e-3},  # no sampled step lands on a trough (0/0-like rounding)
    "hyperbolic": {"upper_bound": 250.0},  # U >= the default total_epochs (250) that sched() validates with
    "exp_hyperbolic": {"upper_bound": 260.0},
    "warmup_hyperbolic": {"upper_bound": 300.0},
    "warmup_exp_hyperbolic": {"upper_bound": 400.0},
    "warmup_cosine": {"start_factor": 0.1},
    "svag_triangle": {"heights": [1.0]},  # one cycle: the default budget (250) and BUDGETS' 4 are whole cycles
    "svag_cosine": {"offset": 2e-3},
}
# the epoch budget of the traced-count check where a family needs another than 3 (whole triangle cycles)
BUDGETS = {"svag_triangle": 4.0}


def test_sample_params_cover_every_family():
    assert set(SAMPLE_PARAMS) == set(SCHEDULE_FAMILIES)


@pytest.mark.parametrize("name", sorted(SAMPLE_PARAMS))
def test_traced_count_matches_python_int(name):
    """The loop indexes schedules with a traced int32 count inside jit; it must agree with eager ints."""
    fn = build_schedule(sched(name, **SAMPLE_PARAMS[name]), 0.1, BUDGETS.get(name, 3.0), SPE)
    steps = [0, 1, 50, 99, 100, 390, 391, 781, 1000, 1171]
    traced = jax.jit(jax.vmap(fn))(jnp.asarray(steps, jnp.int32))
    eager = np.array([float(fn(s)) for s in steps])
    np.testing.assert_allclose(np.asarray(traced), eager, rtol=RTOL, atol=1e-8)


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "inverse_sqrt", "warmup_steps": 0},
        {"name": "cosine_annealing", "t_max": 0},
        {"name": "cosine_decay_with_floor", "t_max": -5},
        {"name": "warmup_cosine_decay", "t_max": 0},
        {"name": "linear", "transition_epochs": 0},
        {"name": "warmup_piecewise_decay", "boundaries": [70, 30, 90]},
        {"name": "warmup_piecewise_decay", "warmup_ratio": 1.0},
        {"name": "warmup_piecewise_decay", "warmup_ratio": -0.1},
        {"name": "warmup_piecewise_decay", "boundaries": 30},
        {"name": "piecewise_constant", "boundaries_and_scales": [15, 10]},
        {"name": "cosine_ramp_step_increase", "ramp_start": 100, "ramp_end": 100},
        {"name": "cosine_ramp_step_increase", "step_every": 0},
        {"name": "cosine_annealing", "cycle": "sometimes"},
        {"name": "inverse_sqrt", "warmup_steps": "many"},
        {"name": "linear", "t_max": 3},  # a parameter of another family
        {"name": "cosinus"},  # no such family
        {"name": "hyperbolic", "upper_bound": 100},  # U below the default budget of 250 epochs
        {"name": "cyclic", "step_up": 0.0},
        {"name": "one_cycle", "pct_start": 1.5},
        {"t_max": 200},  # no family name
    ],
)
def test_bad_schedule_params_are_rejected(bad):
    with pytest.raises(ConfigError):
        build_config({"lr_scheduler": bad})


def test_bad_params_rejected_for_every_schedule_key():
    for key in ("precond_lr_scheduler", "ema_scheduler", "precond_update_scheduler", "perturbation_rho_scheduler"):
        with pytest.raises(ConfigError, match=key):
            build_config({key: {"name": "inverse_sqrt", "warmup_steps": 0}})
