"""SVAG, noisy gradient descent and the LSR noise statistics on linear regression in float64.

Per-example losses ℓ_i(θ) = ½(x_iᵀθ − y_i)² have closed-form gradients g_i = (x_iᵀθ − y_i)·x_i;
the reference moments are exact functions of them: ∇L = ḡ and the finite-population covariance
Σ_N = (1/N) Σ_i (g_i − ḡ)(g_i − ḡ)ᵀ over the N examples. Monte Carlo estimates (gradients of the
library's weighted losses, vmapped over thousands of draws) must fall within 5 standard errors of
the exact moments, the standard errors estimated from the same draws; where a wrong formula is
close, the test also checks it is rejected (so the tolerance is not vacuous).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from llqr.optim import svag

N, D, B = 64, 3, 4
DRAWS = 20_000
Z = 5.0  # standard errors allowed


@pytest.fixture
def x64():
    old = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", old)


@pytest.fixture
def problem(x64):
    """(x, y, θ) away from the optimum, so ∇L is not small next to the noise."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D))
    theta_star = np.array([1.0, -2.0, 0.5])
    y = x @ theta_star + 0.3 * rng.normal(size=N)
    theta = theta_star + np.array([0.8, 0.5, -0.6])
    return jnp.asarray(x), jnp.asarray(y), jnp.asarray(theta)


def per_example_losses(theta, x, y):
    return 0.5 * (x @ theta - y) ** 2


def mean_loss(theta, batch):
    x, y = batch
    return jnp.mean(per_example_losses(theta, x, y))


def exact_moments(x, y, theta):
    """(∇L, Σ_N) from the closed-form per-example gradients."""
    x, y, theta = map(np.asarray, (x, y, theta))
    g = (x @ theta - y)[:, None] * x
    mean = g.mean(axis=0)
    centred = g - mean
    return mean, centred.T @ centred / len(g)


def check_moments(samples, mean, cov, wrong_covs=()):
    """Sample mean and covariance of ``samples`` (M, d) within Z standard errors of the exact
    ``mean`` and ``cov``; each of ``wrong_covs`` is off by more than Z standard errors somewhere."""
    h = np.asarray(samples)
    m = len(h)
    h_mean = h.mean(axis=0)
    se_mean = h.std(axis=0, ddof=1) / np.sqrt(m)
    assert np.all(np.abs(h_mean - mean) <= Z * se_mean), (h_mean, mean, se_mean)
    c = h - h_mean
    products = c[:, :, None] * c[:, None, :]
    h_cov = products.sum(axis=0) / (m - 1)
    se_cov = products.std(axis=0, ddof=1) / np.sqrt(m)
    assert np.all(np.abs(h_cov - cov) <= Z * se_cov), (h_cov, cov, se_cov)
    for wrong in wrong_covs:
        assert np.max(np.abs(h_cov - wrong) / se_cov) > Z, "the test cannot tell the covariance from a wrong one"


# --- coefficients, schedules -------------------------------------------------------------------------


@pytest.mark.parametrize("l", [1, 2, 4, 8, 32])
def test_coefficients(l):
    c1, c2 = svag.svag_coefficients(l)
    assert c1 + c2 == pytest.approx(1.0, abs=1e-12)
    assert c1 ** 2 + c2 ** 2 == pytest.approx(l, rel=1e-12)
    w = np.asarray(svag.svag_example_weights(l, 3))
    assert w.shape == (6,) and np.all(w[:3] == 2 * c1) and np.all(w[3:] == 2 * c2)


def test_l_one_is_exactly_one_and_zero():
    assert svag.svag_coefficients(1) == (1.0, 0.0)
    w = np.asarray(svag.svag_example_weights(1, 4))
    assert list(w) == [2.0] * 4 + [0.0] * 4
    with pytest.raises(ValueError, match="l >= 1"):
        svag.svag_coefficients(0.5)
    with pytest.raises(ValueError, match="variant"):
        svag.svag_example_weights(2, 4, variant="sde3")


def test_lr_steps_and_schedule():
    assert svag.svag_lr(0.1, 4) == pytest.approx(0.025)
    assert svag.svag_steps(1000, 4) == 4000 and svag.svag_steps(10, 2.5) == 25
    assert svag.svag_milestones((80, 120), 4) == (320, 480)
    assert svag.svag_batch_size(128) == 256 and svag.svag_batch_size(128, "sde2") == 128
    base = optax.piecewise_constant_schedule(0.1, {80: 0.1, 120: 0.1})
    stretched = svag.svag_schedule(base, 4)
    for k, expected in [(0, 0.025), (319, 0.025), (320, 0.0025), (479, 0.0025), (480, 0.00025)]:
        assert float(stretched(k)) == pytest.approx(expected)


# --- l = 1 is SGD ------------------------------------------------------------------------------------------


def test_sde1_at_l1_is_sgd_bit_for_bit(problem):
    x, y, theta = problem
    batch = (x[:2 * B], y[:2 * B])
    half = (x[:B], y[:B])
    sgd = jax.grad(mean_loss)(theta, half)
    svag_grad = jax.grad(lambda p: svag.svag_loss(mean_loss, p, batch, 1))(theta)
    assert np.asarray(sgd).tobytes() == np.asarray(svag_grad).tobytes()
    jit_sgd = jax.jit(jax.grad(mean_loss))(theta, half)
    jit_svag = jax.jit(jax.grad(lambda p, b: svag.svag_loss(mean_loss, p, b, 1)))(theta, batch)
    assert np.asarray(jit_sgd).tobytes() == np.asarray(jit_svag).tobytes()
    # sde2 at l = 1: the loss is returned unmultiplied
    key = jax.random.PRNGKey(3)
    sde2 = jax.grad(lambda p: svag.svag_loss(mean_loss, p, half, 1, variant="sde2", key=key))(theta)
    assert np.asarray(sgd).tobytes() == np.asarray(sde2).tobytes()
    # the weights form: the same gradient up to rounding (the zero half is still summed over)
    w = svag.svag_example_weights(1, B)
    weighted = jax.grad(lambda p: svag.weighted_loss(per_example_losses(p, *batch), w))(theta)
    np.testing.assert_allclose(weighted, sgd, rtol=1e-14, atol=0)


def test_svag_loss_matches_the_weights_form(problem):
    x, y, theta = problem
    batch = (x[:2 * B], y[:2 * B])
    for l in (2, 4):
        a = svag.svag_loss(mean_loss, theta, batch, l)
        b = svag.weighted_loss(per_example_losses(theta, *batch), svag.svag_example_weights(l, B))
        np.testing.assert_allclose(a, b, rtol=1e-13)
    key = jax.random.PRNGKey(5)
    a = svag.svag_loss(mean_loss, theta, (x[:B], y[:B]), 4, variant="sde2", key=key)
    b = svag.weighted_loss(per_example_losses(theta, x[:B], y[:B]), svag.svag_example_weights(4, B, "sde2", key))
    np.testing.assert_allclose(a, b, rtol=1e-13)
    factor = float(a / mean_loss(theta, (x[:B], y[:B])))
    assert factor in (pytest.approx(1 + np.sqrt(3)), pytest.approx(1 - np.sqrt(3)))


def test_svag_loss_aux_and_errors(problem):
    x, y, theta = problem
    loss, aux = svag.svag_loss(lambda p, b: (mean_loss(p, b), b[0].shape[0]), theta, (x[:8], y[:8]), 2,
                               has_aux=True)
    assert aux == 4
    with pytest.raises(ValueError, match="2B"):
        svag.svag_loss(mean_loss, theta, (x[:7], y[:7]), 2)
    with pytest.raises(ValueError, match="key"):
        svag.svag_loss(mean_loss, theta, (x[:4], y[:4]), 2, variant="sde2")


# --- Monte Carlo moments -------------------------------------------------------------------------------------


def draw_indices(seed, draws, size, replace=True):
    """(draws, size) example indices, on the host (cheaper than compiling a jax.random draw)."""
    rng = np.random.default_rng(seed)
    if replace:
        return rng.integers(0, N, (draws, size))
    return np.argsort(rng.random((draws, N)), axis=1)[:, :size]


def svag_gradients(x, y, theta, l, idx):
    """One SVAG (sde1) gradient per row of ``idx`` (2B indices: first half γ1, second γ2)."""
    w = svag.svag_example_weights(l, B)

    def one(i):
        return jax.grad(lambda p: svag.weighted_loss(per_example_losses(p, x[i], y[i]), w))(theta)

    return jax.jit(jax.vmap(one))(idx)


@pytest.mark.parametrize("l", [1, 4])
def test_svag_gradient_is_unbiased_with_covariance_l_sigma_over_b(problem, l):
    x, y, theta = problem
    mean, sigma = exact_moments(x, y, theta)
    grads = svag_gradients(x, y, theta, l, draw_indices(10 + l, DRAWS, 2 * B))
    wrong = sigma / B if l != 1 else 2 * sigma / B
    check_moments(grads, mean, l * sigma / B, wrong_covs=[wrong])


def test_svag_without_replacement_halves(problem):
    """Halves from one without-replacement draw of 2B are anticorrelated: the covariance is
    l·V + (l−1)·Σ_N/(N−1), V = Σ_N/B·(N−B)/(N−1) the without-replacement batch covariance."""
    x, y, theta = problem
    l = 8
    mean, sigma = exact_moments(x, y, theta)
    grads = svag_gradients(x, y, theta, l, draw_indices(7, DRAWS, 2 * B, replace=False))
    v = sigma / B * (N - B) / (N - 1)
    check_moments(grads, mean, l * v + (l - 1) * sigma / (N - 1))


def test_svag_loss_path_matches_weights_path_on_draws(problem):
    x, y, theta = problem
    idx = draw_indices(2, 8, 2 * B)

    def via_loss(i):
        return jax.grad(lambda p: svag.svag_loss(mean_loss, p, (x[i], y[i]), 4))(theta)

    np.testing.assert_allclose(jax.jit(jax.vmap(via_loss))(idx), svag_gradients(x, y, theta, 4, idx), rtol=1e-12)


def test_sde2_adds_the_gradient_outer_product(problem):
    x, y, theta = problem
    l = 4
    mean, sigma = exact_moments(x, y, theta)

    def one(i, key):
        return jax.grad(lambda p: svag.svag_loss(mean_loss, p, (x[i], y[i]), l, variant="sde2", key=key))(theta)

    keys = jax.random.split(jax.random.PRNGKey(11), DRAWS)
    grads = jax.jit(jax.vmap(one))(draw_indices(11, DRAWS, B), keys)
    outer = np.outer(mean, mean)
    check_moments(grads, mean, l * sigma / B + (l - 1) * outer, wrong_covs=[l * sigma / B])


def test_noisy_gd_covariance_is_sigma_over_b(problem):
    """Exact finite-population form: Cov = Σ_N/B with Σ_N the 1/N covariance over the N examples."""
    x, y, theta = problem
    mean, sigma = exact_moments(x, y, theta)

    def one(key):
        w = svag.noisy_gd_weights(key, N, B)
        return jax.grad(lambda p: svag.weighted_loss(per_example_losses(p, x, y), w))(theta)

    grads = jax.jit(jax.vmap(one))(jax.random.split(jax.random.PRNGKey(12), DRAWS))
    # uncentred z would add ∇L∇Lᵀ/B; the 1/(N−1) covariance differs by too little to reject here
    check_moments(grads, mean, sigma / B, wrong_covs=[sigma / B + np.outer(mean, mean) / B])
    w = svag.noisy_gd_weights(jax.random.PRNGKey(0), N, B)
    assert w.shape == (N,) and float(jnp.sum(w)) == pytest.approx(N, rel=1e-12)


# --- noise statistics ----------------------------------------------------------------------------------------


def synthetic(seed, reps, m, batch, mu, chol):
    """(reps, m, d) minibatch gradients: means of ``batch`` per-example draws N(mu, S), S = chol·cholᵀ
    (drawn on the host)."""
    mu, chol = np.asarray(mu), np.asarray(chol)
    per_example = mu + np.random.default_rng(seed).normal(size=(reps, m, batch, len(mu))) @ chol.T
    return jnp.asarray(per_example.mean(axis=2))


@pytest.fixture
def gaussian(x64):
    rng = np.random.default_rng(4)
    d = 5
    a = rng.normal(size=(d, d))
    chol = np.linalg.cholesky(a @ a.T / d + 0.5 * np.eye(d))
    mu = 0.2 * rng.normal(size=d)
    return jnp.asarray(mu), jnp.asarray(chol), float(np.sum(chol ** 2))  # tr S = ‖chol‖_F²


def test_noise_statistics_recovers_trace_over_b(gaussian):
    mu, chol, tr_s = gaussian
    batch, m = 8, DRAWS
    grads = synthetic(0, 1, m, batch, mu, chol)[0]
    stats = svag.noise_statistics(grads, mu, batch)
    sq = np.sum((np.asarray(grads) - np.asarray(grads).mean(axis=0)) ** 2, axis=1)
    se = sq.std(ddof=1) / np.sqrt(m)
    assert abs(float(stats["N_batch"]) - tr_s / batch) <= Z * se
    assert abs(float(stats["N"]) - tr_s) <= Z * batch * se
    assert float(stats["G"]) == pytest.approx(float(jnp.sum(mu ** 2)), rel=1e-12)
    assert float(stats["ratio"]) == pytest.approx(float(stats["N"] / (batch * stats["G"])), rel=1e-12)


def test_noise_statistics_bias_corrections(gaussian):
    """Small windows (M = 4) over many replications: the trace uses 1/(M−1), G subtracts the
    noise of ∇L's estimate (ḡ, or a full_grad averaged over S examples). The uncorrected forms
    are biased by more than Z standard errors, so the corrections are what passes."""
    mu, chol, tr_s = gaussian
    batch, m, reps, s = 2, 4, DRAWS, 16
    grads = synthetic(1, reps, m, batch, mu, chol)
    big = synthetic(2, reps, 1, s, mu, chol)[:, 0]  # an independent estimate of ∇L over S examples
    g_true = float(jnp.sum(mu ** 2))

    own, ext = jax.jit(lambda g, f: (
        jax.vmap(lambda g: svag.noise_statistics(g, None, batch))(g),
        jax.vmap(lambda g, f: svag.noise_statistics(g, f, batch, full_grad_batch_size=s))(g, f)))(grads, big)

    def check(values, target, biased):
        v = np.asarray(values)
        se = v.std(ddof=1) / np.sqrt(len(v))
        assert abs(v.mean() - target) <= Z * se, (v.mean(), target, se)
        assert abs(v.mean() + biased - target) > Z * se

    check(own["N"], tr_s, -tr_s / m)  # 1/M instead of 1/(M−1) scales the trace by (M−1)/M
    check(own["G"], g_true, tr_s / (batch * m))  # ‖ḡ‖² overshoots by tr Σ/(M·B)
    check(ext["G"], g_true, tr_s / s)  # ‖ĝ_S‖² overshoots by tr Σ/S


def test_tree_and_streaming_forms_agree(gaussian):
    mu, chol, _tr = gaussian
    grads = synthetic(3, 1, 6, 3, mu, chol)[0]
    flat = svag.noise_statistics(grads, None, 3)
    tree = {"a": grads[:, :2], "b": {"c": grads[:, 2:].reshape(6, 3, 1)}}
    by_tree = svag.tree_noise_statistics(tree, None, 3)
    acc = svag.noise_accumulator_init(jax.tree_util.tree_map(lambda a: a[0], tree))
    update = jax.jit(svag.noise_accumulator_update)
    for i in range(6):
        acc = update(acc, jax.tree_util.tree_map(lambda a, i=i: a[i], tree))
    streamed = svag.noise_accumulator_finalize(acc, 3)
    full = {"a": mu[:2], "b": {"c": mu[2:].reshape(3, 1)}}
    with_full = svag.tree_noise_statistics(tree, full, 3)
    streamed_full = svag.noise_accumulator_finalize(acc, 3, full)
    for key in ("G", "N", "N_batch", "ratio"):
        np.testing.assert_allclose(by_tree[key], flat[key], rtol=1e-12)
        np.testing.assert_allclose(streamed[key], flat[key], rtol=1e-10)
        np.testing.assert_allclose(streamed_full[key], with_full[key], rtol=1e-10)
    np.testing.assert_allclose(with_full["G"], jnp.sum(mu ** 2), rtol=1e-12)
    with pytest.raises(ValueError, match="two"):
        svag.noise_statistics(grads[:1], None, 3)
