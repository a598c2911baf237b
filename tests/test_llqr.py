"""Oracle tests of the LLQR problem and fit against dense second-order references (float64)."""

import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from llqr.optim import (
    FAMILIES,
    apply_blocks,
    fit_blocks,
    init_blocks,
    lqr_cost,
    make_problem,
    precond_cost_and_grad,
    scale_by_llqr,
)
from llqr.optim.exact import curvature_matrix, preconditioned_gradient
from llqr.optim.lqr import blend


def _enable_x64():
    ctx = getattr(jax, "enable_x64", None)
    if ctx is None:
        from jax._src import config as _config

        ctx = _config.enable_x64
    return ctx(True)


@pytest.fixture(autouse=True)
def x64():
    with _enable_x64():
        yield


class TanhMLP(nn.Module):
    """4 -> 5 -> 3 with tanh, so every stage has non-zero second-order terms."""

    @nn.compact
    def __call__(self, x):
        return nn.log_softmax(nn.Dense(3)(jnp.tanh(nn.Dense(5)(x))))


class TinyCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = jnp.tanh(nn.Conv(2, (3, 3))(x))
        return nn.log_softmax(nn.Dense(3)(x.reshape(x.shape[0], -1)))


class SoftmaxRegression(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.log_softmax(nn.Dense(3)(x))


def _setup(model, x_shape, n=6, seed=0):
    kx, ky, kp = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = jax.random.normal(kx, (n, *x_shape), jnp.float64)
    y = jax.random.randint(ky, (n,), 0, 3)
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), model.init(kp, x)["params"])
    return (lambda p, xc: model.apply({"params": p}, xc)), params, x, y


CASES = [(TanhMLP(), (4,)), (TinyCNN(), (4, 4, 1))]


@pytest.mark.parametrize("divergence,case", [
    (d, c) if c == 0 or d == "ngd" else pytest.param(d, c, marks=pytest.mark.slow)  # cnn: ngd by default
    for d in ("newton", "ngd", "reverse_kl") for c in range(len(CASES))],
    ids=[f"{('mlp', 'cnn')[c]}-{d}" for d in ("newton", "ngd", "reverse_kl") for c in range(len(CASES))])
def test_lqr_cost_equals_quadratic_model_from_jax_hessian(case, divergence):
    f, params, x, y = _setup(*CASES[case])
    damping = 0.3
    _, unravel = jax.flatten_util.ravel_pytree(params)
    H, g = jax.jit(lambda p: curvature_matrix(f, p, x, y, divergence=divergence, label_smoothing=0.1)[:2])(params)

    @jax.jit
    def cost(p, u):
        problem = make_problem(f, p, x, y, divergence=divergence, damping=damping, label_smoothing=0.1)
        return lqr_cost(problem, unravel(u))

    for seed in range(3):
        u = jax.random.normal(jax.random.PRNGKey(10 + seed), g.shape, jnp.float64)
        expected = 0.5 * u @ (H + damping * jnp.eye(len(u))) @ u + g @ u
        np.testing.assert_allclose(cost(params, u), expected, rtol=1e-10)


def test_ngd_curvature_is_the_summed_fisher_and_renyi_the_mean_fisher_times_alpha():
    f, params, x, y = _setup(TanhMLP(), (4,))
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    n = x.shape[0]
    # explicit GGN: sum_n J_n^T (diag p_n - p_n p_n^T) J_n, J_n the logits Jacobian (log-probs = logits up to shift)
    logits = lambda v: f(unravel(v), x)  # noqa: E731
    J = jax.jacobian(logits)(flat)  # (n, K, P)
    p = jnp.exp(logits(flat))
    fisher = sum(J[i].T @ (jnp.diag(p[i]) - jnp.outer(p[i], p[i])) @ J[i] for i in range(n))
    H_ngd, _, _ = curvature_matrix(f, params, x, y, divergence="ngd")
    np.testing.assert_allclose(H_ngd, fisher, atol=1e-12)
    H_renyi, _, _ = curvature_matrix(f, params, x, y, divergence="renyi", order=0.3)
    np.testing.assert_allclose(H_renyi, 0.3 * fisher / n, atol=1e-12)


@pytest.mark.parametrize("divergence", [pytest.param("newton", marks=pytest.mark.slow), "ngd"])
def test_dense_fit_converges_to_the_exact_direction(divergence):
    f, params, x, y = _setup(SoftmaxRegression(), (4,), n=8)
    damping = 0.5
    exact = jax.flatten_util.ravel_pytree(preconditioned_gradient(f, params, x, y, divergence=divergence,
                                                                  damping=damping))[0]
    H, g, _ = curvature_matrix(f, params, x, y, divergence=divergence)
    eig = jnp.linalg.eigvalsh(H + damping * jnp.eye(len(g)))
    assert eig.min() > 0
    lr = 1.0 / (eig.max() * (g @ g))  # stable step for the quadratic in P
    start = init_blocks("dense", params)
    errors = []
    for steps in (3, 30, 300):

        @jax.jit
        def fit(p, start, steps=steps):
            problem = make_problem(f, p, x, y, divergence=divergence, damping=damping)
            blocks, costs = fit_blocks(problem, "dense", start, steps=steps, lr=lr, solver="sgd", clip_norm=1e9)
            return apply_blocks("dense", blocks, problem.grad), costs

        pg, costs = fit(params, start)
        assert np.all(np.diff(np.asarray(costs)) <= 1e-12)  # J(P_k) non-increasing
        direction = jax.flatten_util.ravel_pytree(pg)[0]
        errors.append(float(jnp.linalg.norm(direction - exact) / jnp.linalg.norm(exact)))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-6, errors


# psd-*: the e-kfac products with d = r² + ε; dense/exact/diag-kfac: the products of the kept families
@pytest.mark.parametrize("structure", [
    pytest.param(s, marks=pytest.mark.slow) if s.startswith("psd-") or s in ("dense", "exact", "diag-kfac") else s
    for s in FAMILIES])
def test_precond_gradient_matches_autodiff_for_every_structure(structure):
    f, params, x, y = _setup(TinyCNN(), (4, 4, 1))
    blocks = init_blocks(structure, params)
    blocks = jax.tree_util.tree_map(
        lambda b: b + 0.1 * jax.random.normal(jax.random.PRNGKey(b.size), b.shape, b.dtype), blocks)

    @jax.jit
    def both(p, blocks, structure=structure):
        problem = make_problem(f, p, x, y, divergence="newton", damping=0.1)
        direct = lambda b: lqr_cost(problem, jax.tree_util.tree_map(  # noqa: E731
            jnp.negative, apply_blocks(structure, b, problem.grad)))
        return precond_cost_and_grad(problem, structure, blocks), (direct(blocks), jax.grad(direct)(blocks))

    (value, grads), (direct_value, direct_grads) = both(params, blocks)
    np.testing.assert_allclose(value, direct_value, rtol=1e-10)
    for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(direct_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("chunk", [2, pytest.param(4, marks=pytest.mark.slow), 5])
@pytest.mark.parametrize("divergence", [pytest.param("newton", marks=pytest.mark.slow), "ngd"])
def test_chunked_and_low_memory_routes_equal_the_full_batch(chunk, divergence):
    f, params, x, y = _setup(TinyCNN(), (4, 4, 1), n=8)
    blocks = init_blocks("e-kfac", params)

    @jax.jit
    def routes(p, blocks):
        full = make_problem(f, p, x, y, divergence=divergence, damping=0.2)
        other = make_problem(f, p, x, y, divergence=divergence, damping=0.2, chunk_size=chunk, cache=False)
        return [precond_cost_and_grad(q, "e-kfac", blocks) for q in (full, other)]

    (v1, g1), (v2, g2) = routes(params, blocks)
    np.testing.assert_allclose(v1, v2, rtol=1e-10)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_zero_lr_and_full_ema_leave_p_unchanged_and_nan_never_escapes():
    f, params, x, y = _setup(TanhMLP(), (4,))
    problem = make_problem(f, params, x, y, divergence="ngd")
    start = init_blocks("diagonal", params)
    fitted, _ = fit_blocks(problem, "diagonal", start, steps=5, lr=0.0)
    leaves = jax.tree_util.tree_leaves
    assert all(jnp.array_equal(a, b) for a, b in zip(leaves(fitted), leaves(start)))
    moved, _ = fit_blocks(problem, "diagonal", start, steps=5, lr=1.0)
    kept = blend(start, moved, 1.0)
    assert all(jnp.array_equal(a, b) for a, b in zip(leaves(kept), leaves(start)))
    bad = problem._replace(curvature=lambda v: jax.tree_util.tree_map(lambda t: t * jnp.nan, v))
    out, _ = fit_blocks(bad, "diagonal", start, steps=3, lr=1.0)
    assert all(bool(jnp.all(jnp.isfinite(b))) for b in jax.tree_util.tree_leaves(out))


def test_identity_llqr_transform_is_bit_identical_to_the_plain_optimizer():
    f, params, x, y = _setup(TinyCNN(), (4, 4, 1))
    g = jax.grad(lambda p: -jnp.mean(f(p, x)[jnp.arange(len(y)), y]))(params)
    for structure in FAMILIES:
        tx = optax.chain(scale_by_llqr(structure), optax.sgd(0.1, momentum=0.9))
        plain = optax.sgd(0.1, momentum=0.9)
        a, _ = tx.update(g, tx.init(params), params)
        b, _ = plain.update(g, plain.init(params), params)
        for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
            if structure.startswith("psd-"):  # diag = r^2 + eps: identity only to rounding
                np.testing.assert_allclose(u, v, rtol=1e-7)
            else:
                assert jnp.array_equal(u, v), structure


def test_chunking_a_non_separable_divergence_is_refused():
    f, params, x, y = _setup(TanhMLP(), (4,))
    with pytest.raises(ValueError, match="'renyi' is not a sum over samples"):
        make_problem(f, params, x, y, divergence="renyi", chunk_size=2)


@pytest.mark.parametrize("divergence", [pytest.param("newton", marks=pytest.mark.slow), "ngd"])
def test_exact_structure_applies_the_dense_solve(divergence):
    from llqr.config import build_config
    from llqr.optim import make_llqr_fit

    f, params, x, y = _setup(TanhMLP(), (4,), n=8)
    cfg = build_config({"block_structure": "exact", "divergence": divergence, "damping": 0.3})
    fit = make_llqr_fit(lambda p, bs, xc: f(p, xc), cfg)
    start = init_blocks("exact", params)
    blocks, cost_old, cost_new = fit(start, params, {}, x, y, 1e-3, 0.0)
    g = jax.grad(lambda p: -jnp.mean(f(p, x)[jnp.arange(len(y)), y]))(params)
    want = preconditioned_gradient(f, params, x, y, divergence=divergence, damping=0.3)
    got = apply_blocks("exact", blocks, g)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    H, _, _ = curvature_matrix(f, params, x, y, divergence=divergence)
    if jnp.linalg.eigvalsh(H + 0.3 * jnp.eye(len(H))).min() > 0:  # the solve is then J's minimiser
        assert cost_new < cost_old
    half, _, _ = fit(start, params, {}, x, y, 1e-3, 0.5)  # EMA blends the matrices
    np.testing.assert_allclose(half["P"], 0.5 * start["P"] + 0.5 * blocks["P"], rtol=1e-12)


def test_exact_structure_refuses_large_models():
    from llqr.optim.structures import EXACT_MAX_PARAMS, StructureTooLarge

    params = {"w": jnp.zeros((EXACT_MAX_PARAMS + 1,))}
    with pytest.raises(StructureTooLarge, match="at most 4096 parameters"):
        init_blocks("exact", params)


class TinyTransformer(nn.Module):
    """Embedding, LayerNorm, self-attention and a readout: the stage kinds of the IWSLT model."""

    @nn.compact
    def __call__(self, tokens):
        h = nn.Embed(7, 8)(tokens)
        h = h + nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8)(nn.LayerNorm()(h))
        return nn.log_softmax(nn.Dense(3)(jnp.mean(h, axis=1)))


@pytest.mark.slow  # ~1 min: a full fit on every leaf kind; test_translation covers attention models in the default run
def test_attention_embedding_and_norm_leaves_get_their_matrix_views_and_fit():
    model = TinyTransformer()
    tokens = jax.random.randint(jax.random.PRNGKey(1), (6, 5), 0, 7)
    y = jax.random.randint(jax.random.PRNGKey(2), (6,), 0, 3)
    init = model.init(jax.random.PRNGKey(0), tokens)["params"]
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), init)
    f = lambda p, xc: model.apply({"params": p}, xc)  # noqa: E731
    blocks = init_blocks("e-kfac", params)
    attn = blocks["MultiHeadDotProductAttention_0"]
    assert attn["query"]["kernel"]["QA"].shape == (8, 8)  # (emb, heads*head_dim), not (emb*heads, head_dim)
    assert attn["query"]["kernel"]["QG"].shape == (8, 8)
    assert attn["out"]["kernel"]["QA"].shape == (8, 8)  # (heads*head_dim, emb)
    assert blocks["Embed_0"]["embedding"]["QA"].shape == (7, 7)
    assert set(blocks["LayerNorm_0"]["scale"]) == {"d"}
    for structure in [s for s in FAMILIES if not s.startswith("psd-")]:  # psd-* share the e-kfac views

        @jax.jit
        def fit(p, start, structure=structure):
            problem = make_problem(f, p, tokens, y, divergence="ngd", damping=0.1)
            return fit_blocks(problem, structure, start, steps=4, lr=1e-3)

        fitted, costs = fit(params, init_blocks(structure, params))
        assert all(bool(jnp.all(jnp.isfinite(b))) for b in jax.tree_util.tree_leaves(fitted)), structure
        assert float(costs[-1]) <= float(costs[0]), structure


class Seq2Seq(nn.Module):
    """(source features, target tokens) -> per-position log-probs (N, T, 4): a tuple input and an
    extra position axis, as the translation model's fit."""

    @nn.compact
    def __call__(self, x):
        source, target = x
        h = jnp.tanh(nn.Dense(6)(source))[:, None, :] + nn.Embed(5, 6)(target)
        return nn.log_softmax(nn.Dense(4)(jnp.tanh(h)))


# slow (18 s of compiles): ragged chunks are in the default run (chunk 5 of 8 above, the golden translation cell)
@pytest.mark.slow
@pytest.mark.parametrize("divergence", ["newton", "ngd"])
def test_chunks_that_do_not_divide_the_batch_give_the_whole_batch_p(divergence):
    """Fit batch 8 in chunks of 3 (3 + 3 + 2), on tuple inputs with padded positions that leave the
    loss (ignore_index) and whose log-prob rows are zeroed, as the runner's fit: the same P as the
    whole batch, so the chunks' loss weights count loss terms, not examples."""
    from llqr.config import build_config
    from llqr.optim import make_llqr_fit

    pad, n, length = 0, 8, 5
    ks, kt, ky, kp = jax.random.split(jax.random.PRNGKey(3), 4)
    lengths = jnp.array([5, 1, 2, 5, 3, 4, 1, 2])  # real positions per example: chunks hold 8, 12 and 3
    real = jnp.arange(length)[None, :] < lengths[:, None]
    target = jnp.where(real, jax.random.randint(kt, (n, length), 1, 5), pad)
    y = jnp.where(real, jax.random.randint(ky, (n, length), 1, 4), pad)
    x = (jax.random.normal(ks, (n, 3), jnp.float64), target)
    model = Seq2Seq()
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), model.init(kp, x)["params"])

    def log_probs(p, bs, xc):
        return jnp.where((xc[1] != pad)[..., None], model.apply({"params": p}, xc), 0.0)

    start = init_blocks("diagonal", params)
    fits = {}
    for name, route in {"whole": {}, "cached_chunks": {"llqr_batch_update_mode": "chunked_lqr_segment",
                                                        "llqr_batch_update_chunk_size": 3},
                        "separable": {"llqr_operator_mode": "lowmem_exact_full",
                                      "llqr_second_order_mode": "sample_separable_exact",
                                      "llqr_second_order_chunk_size": 3}}.items():
        cfg = build_config({**route, "block_structure": "diagonal", "divergence": divergence, "damping": 0.1,
                            "precond_steps": 5, "warm_start_precond": True})
        fits[name] = make_llqr_fit(log_probs, cfg, ignore_index=pad)(start, params, {}, x, y, 0.05, 0.0)
    (want, first, last) = fits.pop("whole")
    assert last < first and max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
        jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(start))) > 0.01  # the fit moved P
    for name, (got, got_first, got_last) in fits.items():
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14, err_msg=name)
        np.testing.assert_allclose([got_first, got_last], [first, last], rtol=1e-10, err_msg=name)


class WideInputMLP(nn.Module):
    """64 -> 32 -> 10: few parameters next to a batch of activations, so that the fit's memory is
    the batch's."""

    @nn.compact
    def __call__(self, x):
        return nn.log_softmax(nn.Dense(10)(jnp.tanh(nn.Dense(32)(x))))


@pytest.mark.parametrize("route", [
    pytest.param({"llqr_batch_update_mode": "chunked_lqr_segment", "llqr_batch_update_chunk_size": 64},
                 marks=pytest.mark.slow),
    pytest.param({"llqr_second_order_mode": "sample_separable_exact", "llqr_second_order_chunk_size": 64},
                 marks=pytest.mark.slow),
], ids=["chunked_lqr_segment", "sample_separable_exact"])
def test_chunked_fit_memory_follows_the_chunk_not_the_batch(route):
    """Structural: the compiled fit's temporaries at chunks of 1/8 of the batch are well below the
    whole-batch fit's (the chunks are summed in a loop, one chunk live at a time)."""
    from llqr.config import build_config
    from llqr.optim import make_llqr_fit

    f, params, x, y = _setup(WideInputMLP(), (64,), n=512)

    def temp_bytes(overrides):
        cfg = build_config({**overrides, "block_structure": "diagonal", "divergence": "ngd", "precond_steps": 2})
        lowered = make_llqr_fit(lambda p, bs, xc: f(p, xc), cfg).lower(
            init_blocks("diagonal", params), params, {}, x, y, 1e-3, 0.9)
        return lowered.compile().memory_analysis().temp_size_in_bytes

    whole = temp_bytes({})
    assert whole > 8 * 512 * (64 + 32 + 10)  # the whole batch's activations are live
    assert temp_bytes(route) < 0.35 * whole


@pytest.mark.slow  # a memory property of the compiled fit (13 s of compiles); the routes' values are in the default run
def test_lowmem_full_rematerialises_the_network_inside_each_product():
    """Structural: lowmem_exact_full keeps fewer intermediates than lowmem_exact_k (same P: see
    tests/test_llqr_routes.py), so its compiled fit needs less temporary memory."""
    from llqr.config import build_config
    from llqr.optim import make_llqr_fit

    f, params, x, y = _setup(TinyCNN(), (8, 8, 1), n=64)

    def temp_bytes(mode):
        cfg = build_config({"llqr_operator_mode": mode, "block_structure": "diagonal", "precond_steps": 2})
        lowered = make_llqr_fit(lambda p, bs, xc: f(p, xc), cfg).lower(
            init_blocks("diagonal", params), params, {}, x, y, 1e-3, 0.9)
        return lowered.compile().memory_analysis().temp_size_in_bytes

    assert temp_bytes("lowmem_exact_full") < temp_bytes("lowmem_exact_k")
