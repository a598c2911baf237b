"""The HyperbolicLR study's schedules against their formulas, and the study's epoch-insensitivity claim."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llqr.config import ConfigError, build_config
from llqr.train import budget_schedules as bs
from llqr.train.schedules import build_schedule

ETA0, ETA_INF = 1e-2, 1e-6
EPOCH_FAMILIES = ("polynomial", "cosine", "exponential", "linear_decay", "step", "hyperbolic", "exp_hyperbolic",
                  "warmup_hyperbolic", "warmup_exp_hyperbolic", "warmup_cosine")
DECAYING = ("polynomial", "cosine", "exponential", "linear_decay", "step", "hyperbolic", "exp_hyperbolic")


def schedule(name, n=20, spe=10.0, **params):
    cfg = build_config({"lr_scheduler": {"name": name, **params}, "total_epochs": n, "learning_rate": ETA0})
    return build_schedule(cfg.lr_scheduler, ETA0, n, spe)


def h(x, n, u):
    return math.sqrt((n - x) * (2 * u - n - x)) / u


@pytest.mark.parametrize("x", [0, 1, 7, 13, 20])
@pytest.mark.parametrize("n,u", [(20, 20), (20, 25), (50, 250)])
def test_hyperbolic_matches_its_formula(x, n, u):
    expected_h = ETA0 + (ETA0 - ETA_INF) * (h(x, n, u) - h(0, n, u))
    expected_eh = ETA0 * (ETA0 / ETA_INF) ** (h(x, n, u) - h(0, n, u))
    assert float(bs.hyperbolic(ETA0, ETA_INF, n, u)(x)) == pytest.approx(expected_h, rel=1e-5, abs=1e-9)
    assert float(bs.exp_hyperbolic(ETA0, ETA_INF, n, u)(x)) == pytest.approx(expected_eh, rel=1e-4)


@pytest.mark.parametrize("fn", [bs.hyperbolic, bs.exp_hyperbolic])
def test_hyperbolic_endpoints(fn):
    assert float(fn(ETA0, ETA_INF, 30, 30)(0)) == pytest.approx(ETA0, rel=1e-6)
    # eta_inf at N only if U = N (float32: H reaches it by cancellation, hence the absolute tolerance)
    assert float(fn(ETA0, ETA_INF, 30, 30)(30)) == pytest.approx(ETA_INF, rel=1e-3, abs=1e-8)
    assert float(fn(ETA0, ETA_INF, 30, 60)(30)) > 2 * ETA_INF


@pytest.mark.parametrize("fn", [bs.hyperbolic, bs.exp_hyperbolic, bs.warmup_hyperbolic])
def test_invalid_hyperbolic_parameters_are_refused(fn):
    with pytest.raises(ValueError, match="upper_bound U=10 must be >= the epoch budget N=20"):
        fn(ETA0, ETA_INF, 20, 10)
    with pytest.raises(ValueError, match="eta_min=0.1 must be below"):
        fn(ETA0, 0.1, 20, 30)


def test_config_refuses_u_below_budget_and_floor_above_lr():
    with pytest.raises(ConfigError, match="upper_bound=15 must be >= total_epochs=20"):
        schedule("warmup_exp_hyperbolic", upper_bound=15)
    with pytest.raises(ConfigError, match="eta_min=0.02 must be below learning_rate=0.01"):
        schedule("hyperbolic", upper_bound=25, eta_min=0.02)


@pytest.mark.parametrize("name", EPOCH_FAMILIES)
def test_per_epoch_families_are_constant_within_an_epoch(name):
    params = {"upper_bound": 25} if "hyperbolic" in name else {}
    fn = schedule(name, **params)
    values = np.array([float(fn(s)) for s in range(0, 200)]).reshape(20, 10)
    assert np.all(values == values[:, :1])


@pytest.mark.parametrize("name", DECAYING)
def test_decaying_families_start_at_eta0_and_never_increase(name):
    params = {"upper_bound": 25} if "hyperbolic" in name else {}
    fn = schedule(name, **params)
    per_epoch = np.array([float(fn(10 * e)) for e in range(21)])
    assert per_epoch[0] == pytest.approx(ETA0, rel=1e-6)
    assert np.all(np.diff(per_epoch) <= 1e-9) and per_epoch[-1] < per_epoch[0]


def test_closed_forms_of_the_pytorch_families():
    n = 20
    assert float(schedule("polynomial", power=0.5)(10 * 5)) == pytest.approx(ETA0 * (1 - 5 / n) ** 0.5, rel=1e-5)
    assert float(schedule("cosine", eta_min=1e-4)(10 * 5)) == pytest.approx(
        1e-4 + (ETA0 - 1e-4) * 0.5 * (1 + math.cos(math.pi * 5 / n)), rel=1e-5)
    assert float(schedule("exponential", gamma=0.9)(10 * 7)) == pytest.approx(ETA0 * 0.9**7, rel=1e-5)
    assert float(schedule("linear_decay", end_factor=0.1)(10 * 10)) == pytest.approx(ETA0 * 0.55, rel=1e-5)
    step = schedule("step")  # step_size null: N // 3 = 6 epochs, gamma 0.1
    assert [float(step(10 * e)) / ETA0 for e in (5, 6, 12, 18)] == pytest.approx([1, 0.1, 0.01, 0.001], rel=1e-5)


@pytest.mark.parametrize("name,start", [("warmup_hyperbolic", ETA_INF), ("warmup_exp_hyperbolic", ETA_INF),
                                        ("warmup_cosine", 0.01 * ETA0)])
def test_warmup_endpoints(name, start):
    n, spe = 40, 10.0
    fn = schedule(name, n=n, spe=spe, **({"upper_bound": 40} if "hyperbolic" in name else {}))
    warm = bs.warmup_epochs(n)
    assert warm == 4
    assert float(fn(0)) == pytest.approx(start, rel=1e-4)
    assert float(fn(spe * (warm // 2))) == pytest.approx(start + (ETA0 - start) / 2, rel=1e-4)
    assert float(fn(spe * warm)) == pytest.approx(ETA0, rel=1e-5)  # the peak, then the decay over N - warmup
    end = float(fn(spe * n))  # U = 40 > N - warmup = 36: close to eta_inf (exactly for the cosine)
    limit = {"warmup_cosine": 1.0001 * ETA_INF, "warmup_exp_hyperbolic": 1.1 * ETA_INF, "warmup_hyperbolic": 0.1 * ETA0}
    assert end <= limit[name]


def test_warmup_is_at_least_one_epoch():
    assert bs.warmup_epochs(5) == 1 and bs.warmup_epochs(9) == 1 and bs.warmup_epochs(200) == 20


def test_one_cycle_and_cyclic_step_per_batch():
    spe, n = 10.0, 20
    one = schedule("one_cycle", n=n, spe=spe)
    values = [float(one(s)) for s in range(int(spe * n))]
    peak = int(np.argmax(values))
    assert peak == pytest.approx(0.3 * spe * n, abs=1) and values[peak] == pytest.approx(ETA0, rel=1e-4)
    assert values[0] == pytest.approx(ETA0 / 25, rel=1e-4) and values[-1] < ETA0 / 25 / 100
    assert len(set(values[:10])) == 10  # changes every batch, not once an epoch
    cyc = schedule("cyclic", n=n, spe=spe, step_up=0.25, eta_min=1e-4)  # step_up 50 batches
    assert float(cyc(0)) == pytest.approx(1e-4, rel=1e-4)
    assert float(cyc(50)) == pytest.approx(ETA0, rel=1e-5) and float(cyc(100)) == pytest.approx(1e-4, rel=1e-3)
    assert float(cyc(25)) == pytest.approx((1e-4 + ETA0) / 2, rel=1e-5) and float(cyc(150)) == pytest.approx(ETA0)


def test_traced_steps_agree_with_python_ints():
    for name in ("warmup_exp_hyperbolic", "one_cycle", "step"):
        fn = schedule(name, **({"upper_bound": 30} if "hyperbolic" in name else {}))
        steps = jnp.arange(0, 210, 7, dtype=jnp.int32)
        np.testing.assert_allclose(np.asarray(jax.jit(jax.vmap(fn))(steps)),
                                   [float(fn(int(s))) for s in steps], rtol=1e-5)


def test_epoch_insensitivity_hyperbolic_vs_cosine():
    """The study's claim as a property of the formulas (U = 250, N = 50..200, early epoch x = 25):
    H's lr stays within 0.81-0.90 of eta0 whatever the budget, cosine's ranges over 0.50-0.96."""
    budgets = range(50, 201, 25)
    hyp = np.array([float(bs.hyperbolic(1.0, 1e-6, n, 250)(25)) for n in budgets])
    cos = np.array([float(bs.cosine(1.0, 1e-6, n)(25)) for n in budgets])
    assert hyp.min() == pytest.approx(0.81, abs=0.01) and hyp.max() == pytest.approx(0.90, abs=0.01)
    assert cos.min() == pytest.approx(0.50, abs=0.01) and cos.max() == pytest.approx(0.96, abs=0.01)
    assert np.ptp(hyp) < 0.25 * np.ptp(cos)
    for x in (5, 10, 25, 40):  # and at every early epoch, not just the quoted one
        spread_h = np.ptp([float(bs.hyperbolic(1.0, 1e-6, n, 250)(x)) for n in budgets])
        spread_c = np.ptp([float(bs.cosine(1.0, 1e-6, n)(x)) for n in budgets])
        assert spread_h < spread_c
