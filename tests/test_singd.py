"""SINGD / IKFAC / KFAC transformations and the per-layer factor capture."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llqr.models.stages import Builder, Flatten, Relu, StageNet
from llqr.optim import singd as S, singd_structures as SS
from llqr.optim.capture import capture, conv_patches, kronecker_factors


def _spd(rng, n, lo=0.2, hi=2.0):
    Q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    return jnp.asarray((Q * np.linspace(lo, hi, n)) @ Q.T, jnp.float32)


def _xent(out, y):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(out.astype(jnp.float32)), y[:, None], axis=1))


class MLP(nn.Module):
    hidden: int = 16
    classes: int = 10

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.classes)(nn.relu(nn.Dense(self.hidden)(x)))


def test_ikfac_fixed_point():
    rng = np.random.default_rng(0)
    A, G, lam = _spd(rng, 6), _spd(rng, 3, 0.5, 1.5), 1e-3
    sk, sc = SS.make_structure("dense", 6), SS.make_structure("dense", 3)
    layer = S.SINGDLayer(sk.eye(), sc.eye(), jnp.zeros((6, 6)), jnp.zeros((3, 3)))

    def body(_, lay):
        return S.update_preconditioner(sk, sc, lay, A, G, damping=lam, alpha1=0.5, lr_cov=0.2, kfac_like=True)

    layer = jax.lax.fori_loop(0, 600, body, layer)
    for M, F in ((layer.K, A), (layer.C, G)):
        want = np.linalg.inv(np.asarray(F, np.float64) + lam * np.eye(F.shape[0]))
        np.testing.assert_allclose(np.asarray(M @ M.T), want, rtol=1e-3, atol=1e-3 * np.abs(want).max())


def _sym_pattern_projection(st, X):
    """Orthogonal projection of a symmetric X onto the symmetrised pattern."""
    if isinstance(st, SS.TriangularToeplitz):
        P = np.asarray(st.to_dense(st.project(X)))
        return P + P.T - np.diag(np.diag(P))
    M = st.mask()
    return np.asarray(X) * (M | M.T)


@pytest.mark.parametrize("name", S.STRUCTURES)
def test_structure_projection_and_closure(name):
    rng = np.random.default_rng(1)
    n = 11
    st = SS.make_structure(name, n, block_size=4, k1=3, k2=2)
    M = st.mask()
    X = rng.normal(size=(n, n)).astype(np.float32)
    X = jnp.asarray(X + X.T)
    P = st.project(X)
    D = np.asarray(st.to_dense(P))
    assert np.all(D[~M] == 0)
    for a, b in zip(jax.tree_util.tree_leaves(st.project(jnp.asarray(D))), jax.tree_util.tree_leaves(P)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)  # Π(Π(X)) = Π(X)
    if isinstance(st, SS.TriangularToeplitz):  # constant diagonals
        for k in range(n):
            d = np.diagonal(D, offset=k if st.upper else -k)
            np.testing.assert_allclose(d, d[0], rtol=1e-6)
    # Π̂: the structured m moves K like the dense symmetric update, to first order
    H = np.asarray(st.to_dense(st.project_hat(X)))
    np.testing.assert_allclose(H + H.T, 2 * _sym_pattern_projection(st, X), rtol=1e-5, atol=1e-5)

    # a few SINGD steps: storage products agree with the dense products, so K stays in the class
    sk, sc = st, SS.make_structure(name, 7, block_size=4, k1=3, k2=2)
    lay = S.SINGDLayer(sk.eye(), sc.eye(), jax.tree_util.tree_map(jnp.zeros_like, sk.eye()),
                       jax.tree_util.tree_map(jnp.zeros_like, sc.eye()))
    Kd, Cd = np.eye(n), np.eye(7)
    step = jax.jit(lambda lay, A, G: S.update_preconditioner(sk, sc, lay, A, G, damping=1e-3, alpha1=0.5, lr_cov=0.1))
    for _ in range(4):
        lay = step(lay, _spd(rng, n), _spd(rng, 7))
        Kd = Kd @ (np.eye(n) - 0.1 * np.asarray(sk.to_dense(lay.mK)))
        Cd = Cd @ (np.eye(7) - 0.1 * np.asarray(sc.to_dense(lay.mC)))
        np.testing.assert_allclose(np.asarray(sk.to_dense(lay.K)), Kd, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(sc.to_dense(lay.C)), Cd, rtol=1e-4, atol=1e-5)
    assert np.all(Kd[~M] == 0) or np.abs(Kd[~M]).max() < 1e-6
    assert not np.allclose(Kd, np.eye(n))


def test_ikfac_direction_matches_kfac():
    rng = np.random.default_rng(2)
    model = MLP()
    x = jnp.asarray(rng.normal(size=(256, 64)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, 256))
    lam = 1e-3
    ik = S.ikfac(1.0, momentum=0.0, damping=lam, lr_cov=0.3)
    kf = S.kfac(1.0, momentum=0.0, damping=lam, ema_decay=0.0, damping_mode="plain")

    @jax.jit
    def run(key):
        params = model.init(key, x)["params"]
        grads = jax.grad(lambda p: _xent(model.apply({"params": p}, x), y))(params)
        factors = kronecker_factors(model.apply, params, x, y, _xent)
        st = jax.lax.fori_loop(0, 151, lambda _, s: S.refresh(s, factors, params), ik.init(params))
        d_ik, _ = ik.update(grads, st, params)
        d_kf, _ = kf.update(grads, S.refresh(kf.init(params), factors, params), params)
        return grads, d_ik, d_kf

    grads, d_ik, d_kf = run(jax.random.PRNGKey(0))
    for a, b in zip(jax.tree_util.tree_leaves(d_ik), jax.tree_util.tree_leaves(d_kf)):
        a, b = np.ravel(a), np.ravel(b)
        assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.99
        assert abs(np.linalg.norm(a) / np.linalg.norm(b) - 1) < 1e-2
    flat_g = np.concatenate([np.ravel(g) for g in jax.tree_util.tree_leaves(grads)])
    flat_k = np.concatenate([np.ravel(g) for g in jax.tree_util.tree_leaves(d_kf)])
    assert flat_k @ flat_g / (np.linalg.norm(flat_k) * np.linalg.norm(flat_g)) < 0.9  # not plain SGD


class ConvNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), strides=(2, 1), padding="SAME")(x))
        x = nn.Conv(5, (2, 3), padding="VALID", use_bias=False, kernel_dilation=(1, 2))(x)
        return nn.Dense(3)(x.reshape(x.shape[0], -1))


def _leaf(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def test_capture_reproduces_gradients_and_conv_output():
    rng = np.random.default_rng(3)
    model = ConvNet()
    x = jnp.asarray(rng.normal(size=(3, 7, 8, 2)), jnp.float32)
    y = jnp.asarray([0, 2, 1])
    convs = (nn.Conv(4, (3, 3), strides=(2, 1), padding="SAME"),
             nn.Conv(5, (2, 3), padding="VALID", kernel_dilation=(1, 2), use_bias=False),
             nn.Conv(3, (3, 3), padding="CIRCULAR"))

    @jax.jit
    def run(key):
        variables = model.init(key, x)
        _, cap = capture(model.apply, variables, x, y, _xent)
        grads = jax.grad(lambda p: _xent(model.apply({"params": p}, x), y))(variables["params"])
        factors = kronecker_factors(model.apply, variables["params"], x, y, _xent)
        pairs = []
        for conv in convs:  # patches @ kernel matrix (+ bias) against the conv itself
            v = conv.init(key, x)
            kernel = v["params"]["kernel"]
            rec = conv_patches(conv, x) @ kernel.reshape(-1, kernel.shape[-1])
            out = conv.apply(v, x)
            pairs.append((out, (rec + v["params"]["bias"] if conv.use_bias else rec).reshape(out.shape)))
        return cap, grads, factors, pairs

    cap, grads, factors, pairs = run(jax.random.PRNGKey(0))
    assert set(cap) == {("Conv_0", "kernel"), ("Conv_1", "kernel"), ("Dense_0", "kernel")}
    for path, (a, g) in cap.items():
        layer = _leaf(grads, path[:-1])
        K = layer["kernel"].reshape(-1, layer["kernel"].shape[-1])
        gw = np.asarray(a.T @ g)
        if "bias" in layer:
            np.testing.assert_allclose(gw[:-1], K, atol=1e-6)
            np.testing.assert_allclose(gw[-1], layer["bias"], atol=1e-6)
            np.testing.assert_allclose(np.asarray(g).sum(0), layer["bias"], atol=1e-6)
        else:
            np.testing.assert_allclose(gw, K, atol=1e-6)
    a, g = cap[("Conv_0", "kernel")]
    A, G = factors[("Conv_0", "kernel")]
    assert a.shape == (3 * 4 * 8, 3 * 3 * 2 + 1)  # rows: batch x output positions; +1: bias column
    np.testing.assert_allclose(A, a.T @ a / a.shape[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(G, 3 * g.T @ g, rtol=1e-5, atol=1e-7)  # B = 3
    for out, rec in pairs:
        np.testing.assert_allclose(rec, out, rtol=1e-5, atol=1e-5)


class TinyStages(StageNet):
    def stages(self):
        b = Builder()
        b.conv("conv", 4, use_bias=True)
        b.add(Relu())
        b.add(Flatten())
        b.dense("fc", 3)
        return b.items


def test_stage_net_factor_keys_drive_singd():
    model = TinyStages()
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 4, 4, 2)), jnp.float32)
    y = jnp.asarray([1, 2])
    tx = S.singd(weight_decay=1e-4)
    kf = S.kfac()

    @jax.jit
    def run(key):
        params = model.init(key, x)["params"]
        factors = kronecker_factors(model.apply, params, x, y, _xent)
        grads = jax.grad(lambda p: _xent(model.apply({"params": p}, x), y))(params)
        states = [tx.init(params)]
        for i in range(3):  # refreshed at steps 0 and 2 (T = 2, the runner's schedule)
            state = S.refresh(states[-1], factors, params) if i % 2 == 0 else states[-1]
            states.append(tx.update(grads, state, params)[1])
        kf_upd, _ = kf.update(grads, S.refresh(kf.init(params), factors, params), params)
        return factors, [s[0] for s in states[1:]], kf_upd

    factors, (s1, s2, s3), kf_upd = run(jax.random.PRNGKey(0))
    assert set(factors) == {("layers_0", "Conv_0", "kernel"), ("layers_3", "Dense_0", "kernel")}
    assert set(s1.layers) == {"layers_0/Conv_0/kernel", "layers_3/Dense_0/kernel"}
    for k, lay in s1.layers.items():
        assert not np.allclose(lay.K, np.eye(lay.K.shape[0]))
        np.testing.assert_array_equal(s2.layers[k].K, lay.K)  # step 1: not a factor step
        assert not np.allclose(s3.layers[k].K, lay.K)
    assert all(np.isfinite(v).all() for v in jax.tree_util.tree_leaves(kf_upd))


@pytest.mark.parametrize("structure,normalize", [pytest.param("dense", False, marks=pytest.mark.slow),
                                                ("tril_toeplitz", True)])
def test_bf16_singd_reduces_loss(structure, normalize):
    rng = np.random.default_rng(5)
    model = MLP(hidden=16, classes=3)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    y = jnp.asarray(np.argmax(x[:, :3] + 0.5 * x[:, 3:6], axis=1))
    x = jnp.asarray(x, jnp.bfloat16)
    tx = S.singd(0.05, lr_cov=0.05, structure=structure, normalize_lr_cov=normalize)

    def loss(p):
        return _xent(model.apply({"params": p}, x), y)

    def step(_, carry):
        p, s = carry
        factors = kronecker_factors(model.apply, p, x, y, _xent)
        upd, s = tx.update(jax.grad(loss)(p), S.refresh(s, factors, p), p)
        return jax.tree_util.tree_map(lambda a, b: a + b, p, upd), s

    @jax.jit
    def run(key):
        params = jax.tree_util.tree_map(lambda p: p.astype(jnp.bfloat16), model.init(key, x)["params"])
        params, state = jax.lax.fori_loop(0, 20, step, (params, tx.init(params)))
        return loss(model.init(key, x)["params"]), loss(params), params, state

    first, last, params, state = run(jax.random.PRNGKey(0))
    assert all(lay.K.dtype == jnp.bfloat16 for lay in state[0].layers.values())
    assert all(np.isfinite(np.asarray(v, np.float32)).all() for v in jax.tree_util.tree_leaves((params, state)))
    assert float(last) < 0.8 * float(first), (float(first), float(last))


def test_state_bytes_ordering():
    params = jax.eval_shape(MLP(hidden=40, classes=10).init, jax.random.PRNGKey(0), jnp.zeros((1, 64)))["params"]
    sizes = {s: S.state_bytes(jax.eval_shape(S.singd(structure=s).init, params))
             for s in ("diagonal", "block_diagonal", "dense")}
    assert sizes["diagonal"] < sizes["block_diagonal"] < sizes["dense"]
    assert S.state_bytes(jax.eval_shape(S.kfac().init, params)) > sizes["dense"] // 2


@pytest.mark.parametrize("kfac_precision", ["run", "fp32"])
def test_kfac_under_bf16_inverts_in_the_chosen_precision(kfac_precision):
    """precision=bf16: kfac_precision=run averages and inverts the factors in bf16 (no float32
    anywhere in the refresh's factor arithmetic), fp32 keeps float32 Cholesky inverses."""
    from llqr.config import build_config
    from llqr.train.optimizers import kronecker_tx

    cfg = build_config({"optimizer": "kfac", "precision": "bf16", "kfac_precision": kfac_precision,
                        "use_preconditioner": False, "factor_damping": 1e-2})
    tx = kronecker_tx(cfg, 0.1)
    params = {"d": {"kernel": jnp.zeros((5, 3), jnp.bfloat16), "bias": jnp.zeros((3,), jnp.bfloat16)}}
    rng = np.random.default_rng(0)
    A, G = _spd(rng, 6), _spd(rng, 3)
    factors = {"d/kernel": (jnp.asarray(A, jnp.bfloat16), jnp.asarray(G, jnp.bfloat16))}
    refresh = jax.jit(lambda s: S.refresh(s, factors, params))
    state = refresh(tx.init(params))
    kf = state[0]
    want = jnp.bfloat16 if kfac_precision == "run" else jnp.float32
    assert all(x.dtype == want for x in jax.tree_util.tree_leaves((kf.factors, kf.inverses)))
    eps = np.sqrt(1e-2)  # damping_mode sqrt
    Ai = np.asarray(kf.inverses["d/kernel"][0], np.float64)
    np.testing.assert_allclose(Ai, np.linalg.inv(np.asarray(factors["d/kernel"][0], np.float64) + eps * np.eye(6)),
                               rtol=0.1 if want == jnp.bfloat16 else 1e-4, atol=0.05 if want == jnp.bfloat16 else 1e-5)
    jaxpr = str(jax.make_jaxpr(refresh)(tx.init(params)))
    assert ("cholesky" in jaxpr) == (kfac_precision == "fp32")
    assert ("f32[6,6]" in jaxpr) == (kfac_precision == "fp32")  # the bf16 route never widens a factor


def test_bf16_kfac_inverse_of_a_singular_factor_is_non_finite_not_an_error():
    M = jnp.asarray([[1.0, 1.0], [1.0, 1.0]], jnp.bfloat16)  # rank one: the second pivot vanishes
    assert not np.isfinite(np.asarray(S.gauss_jordan_inverse(M), np.float32)).all()
    R = _spd(np.random.default_rng(1), 7)
    np.testing.assert_allclose(np.asarray(S.gauss_jordan_inverse(jnp.asarray(R, jnp.float32))), np.linalg.inv(R),
                               rtol=1e-4, atol=1e-5)
