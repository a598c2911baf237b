"""SAM modes in the runner: each mode's ε, buffers and outer update against a hand computation on a
quadratic, start_sam_after_step, invalid combinations, and bit-exact resume of a SAM + LLQR run.

The quadratic: 3 parameters in two top-level groups, ``layer_a/kernel`` (2) and ``layer_b/bias``
(1), per-sample loss ½ Σ_i h_i (w_i − x_i)², so the mean gradient is h ⊙ (w − x̄). P is a known
diagonal swapped into the LLQR state; the main optimizer is plain SGD, so one step is
θ ← θ − lr·u with u = P·g_p (LLQR update) or g_p (vanilla). The reference values are numpy float64
transcriptions of the mode table in docs/algorithms.md ("SAM modes").
"""

import json
import os
import signal
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from llqr.config import ConfigError, build_config, resolve
from llqr.optim import sam, set_blocks
from llqr.train.batches import Batch
from llqr.train.loop import run
from llqr.train.state import TrainState
from llqr.train.steps import build_update_chain, make_steps
from test_train import _final_params, _flat, interrupted_run_matches_uninterrupted

H = np.array([2.0, 0.5, 1.0])
W0 = np.array([0.7, -1.2, 0.4])
P_DIAG = np.array([0.5, 2.0, 1.5])
LR, RHO, BETA = 0.1, 0.05, 0.9
ACC, BATCH = 2, 4


class Quad:
    """A stand-in for a Flax model: 'log-probs' of one class equal to minus the quadratic loss, so
    the runner's cross-entropy at label 0 is exactly ½ Σ h (w − x)² per sample."""

    def apply(self, variables, x, train=False, rngs=None, mutable=None):
        p = variables["params"]
        w = jnp.concatenate([p["layer_a"]["kernel"], p["layer_b"]["bias"]])
        return (-0.5 * jnp.sum(H.astype(np.float32) * (w - x) ** 2, axis=-1))[:, None]


def _tree(w):
    w = np.asarray(w, np.float32)
    return {"layer_a": {"kernel": jnp.asarray(w[:2])}, "layer_b": {"bias": jnp.asarray(w[2:])}}


def _flat3(tree):
    parts = [np.asarray(tree["layer_a"]["kernel"]), np.asarray(tree["layer_b"]["bias"])]
    return np.concatenate(parts).astype(np.float64)


def _batches(n_steps, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(ACC, BATCH, 3)).astype(np.float32) for _ in range(n_steps)]


def _setup(mode, **values):
    cfg = build_config({"optimizer": "sgd", "learning_rate": LR, "sam_mode": mode, "perturbation_rho": RHO,
                        "gbar_beta": BETA, **values})
    tx, main_tx = build_update_chain(cfg, cfg.learning_rate)
    steps = make_steps(Quad(), tx, main_tx, cfg)
    params = _tree(W0)
    opt_state = tx.init(params)
    if cfg.use_preconditioner:
        opt_state = set_blocks(opt_state, jax.tree_util.tree_map(lambda d: {"d": d}, _tree(P_DIAG)))
    state = TrainState(params=params, batch_stats={}, opt_state=opt_state, dropout_key=jax.random.PRNGKey(0),
                       sam=sam.init_buffers(mode, params) if mode is not None else None)
    return cfg, steps.train, steps.sam, state


def _run_steps(step_fn, state, batches, *extra):
    out = []
    for xs in batches:
        state, loss = step_fn(state, Batch(jnp.asarray(xs), jnp.zeros((ACC, BATCH), jnp.int32)), *extra)
        out.append(float(loss))
    return state, out


# --- numpy reference (the mode table, by hand) ----------------------------------------------------

GROUPS = (slice(0, 2), slice(2, 3))  # the two top-level keys


def _grad(w, xs):
    return H * (w - xs.reshape(-1, 3).astype(np.float64).mean(0))


def _loss(w, xs):
    return float(np.mean(0.5 * np.sum(H * (w - xs.reshape(-1, 3).astype(np.float64)) ** 2, axis=-1)))


def _D(v, perturb_mode, norm_mode, p, e=1e-12):
    t = {"ema_grad": v, "ema_precond_grad": p * v}.get(perturb_mode)
    if perturb_mode == "ema_direction":
        t = p * v / np.sqrt(np.dot(p * v, p * v) + e)
    if norm_mode == "euclidean":
        return t / np.sqrt(np.dot(t, t) + e)
    if norm_mode == "matrix_norm":
        return t / np.sqrt(np.dot(v, t) + e)
    ref = t if norm_mode == "layer_euclidean" else v
    out = np.empty(3)
    for sl in GROUPS:
        out[sl] = t[sl] / np.sqrt(np.dot(ref[sl], t[sl]) + e) / np.sqrt(len(GROUPS))
    return out


def _reference(mode, batches, *, p, llqr_update, perturb_mode="ema_grad", norm_mode="euclidean", asam_eta=0.01,
               fisher_eta=0.1):
    """(params after each step, perturbed losses, final buffers) for ``mode`` from W0."""
    w, gbar, g_last, first = W0.copy(), np.zeros(3), np.zeros(3), True
    trace, losses = [], []
    for xs in batches:
        g_c = _grad(w, xs)
        if mode == "base_sam":
            eps = RHO * _D(g_c, perturb_mode, norm_mode, p)
        elif mode == "base_fsam":
            eps = RHO * _D(g_c if first else g_c - gbar, perturb_mode, norm_mode, p)
        elif mode == "past_fsam":
            eps = np.zeros(3) if first else RHO * _D(g_last - gbar, perturb_mode, norm_mode, p)
        elif mode == "asam":
            s = np.array([abs(w[0]) + asam_eta, abs(w[1]) + asam_eta, 1.0])  # layer_b/bias: s = 1
            eps = RHO * s**2 * g_c / np.sqrt(np.sum((s * g_c) ** 2) + 1e-12)
        elif mode == "fisher_sam":
            u = g_c / (g_c**2 + fisher_eta)
            eps = RHO * u / np.sqrt(np.dot(g_c, u) + 1e-12)
        g_p = _grad(w + eps, xs)
        losses.append(_loss(w + eps, xs))
        if mode == "base_fsam":
            gbar = BETA * gbar + (1 - BETA) * g_c
            if perturb_mode == "ema_direction":
                gbar = gbar / np.sqrt(np.dot(gbar, gbar) + 1e-12)
        if mode == "past_fsam":
            gbar, g_last = BETA * gbar + (1 - BETA) * g_last, g_p
        w = w - LR * (p * g_p if llqr_update else g_p)
        trace.append(w.copy())
        first = False
    return trace, losses, {"gbar": gbar, "g_last": g_last}


def _check(mode, values, n_steps, *, llqr_update, p=P_DIAG, **ref_kw):
    cfg, _, sam_step, state = _setup(mode, **values)
    batches = _batches(n_steps)
    trace, losses, buffers = _reference(mode, batches, p=p, llqr_update=llqr_update, **ref_kw)
    for i, xs in enumerate(batches):
        state, (loss,) = _run_steps(sam_step, state, [xs], jnp.float32(RHO))
        np.testing.assert_allclose(_flat3(state.params), trace[i], rtol=2e-5, atol=1e-6, err_msg=f"step {i}")
        np.testing.assert_allclose(loss, losses[i], rtol=2e-5, err_msg=f"loss step {i}")
    assert int(state.sam["count"]) == n_steps
    for name in ("gbar", "g_last"):
        if name in state.sam:
            np.testing.assert_allclose(_flat3(state.sam[name]), buffers[name], rtol=2e-5, atol=1e-7)
    return state


LLQR_ON = {"use_preconditioner": True, "sam_use_preconditioner_on_update": True}
LLQR_OFF = {"use_preconditioner": False, "sam_use_preconditioner_on_update": False}
ONES = np.ones(3)


@pytest.mark.parametrize("norm_mode", sam.NORM_MODES)
@pytest.mark.parametrize("perturb_mode", sam.PERTURB_MODES)
def test_direction_for_every_perturb_and_norm_mode_with_a_diagonal_p(perturb_mode, norm_mode):
    v = np.array([0.3, -1.1, 0.8])
    precond = lambda t: jax.tree_util.tree_map(lambda a, b: a * b, _tree(P_DIAG), t)  # noqa: E731
    d = sam.direction(_tree(v), perturb_mode=perturb_mode, norm_mode=norm_mode, eps=1e-12, precond=precond)
    np.testing.assert_allclose(_flat3(d), _D(v, perturb_mode, norm_mode, P_DIAG), rtol=1e-5)


@pytest.mark.parametrize("perturb_mode,norm_mode", [("ema_grad", "euclidean"), ("ema_precond_grad", "matrix_norm"),
                                                    ("ema_direction", "layer_euclidean"),
                                                    ("ema_precond_grad", "layer_matrix_norm")])
def test_base_sam_step_perturbs_by_rho_d_of_g_c_and_updates_with_p_g_p(perturb_mode, norm_mode):
    _check("base_sam", {**LLQR_ON, "perturb_mode": perturb_mode, "norm_mode": norm_mode}, 2, llqr_update=True,
           perturb_mode=perturb_mode, norm_mode=norm_mode)


@pytest.mark.parametrize("perturb_mode,norm_mode", [("ema_grad", "euclidean"), ("ema_precond_grad", "matrix_norm"),
                                                    ("ema_direction", "layer_euclidean")])
def test_base_fsam_first_step_uses_g_c_then_the_centred_gradient_and_gbar_ema(perturb_mode, norm_mode):
    _check("base_fsam", {**LLQR_ON, "perturb_mode": perturb_mode, "norm_mode": norm_mode}, 3, llqr_update=True,
           perturb_mode=perturb_mode, norm_mode=norm_mode)


@pytest.mark.parametrize("norm_mode", ["euclidean", "layer_matrix_norm"])
def test_past_fsam_has_zero_perturbation_first_then_uses_the_previous_gradients(norm_mode):
    values = {**LLQR_ON, "perturb_mode": "ema_precond_grad", "norm_mode": norm_mode}
    state = _check("past_fsam", values, 3, llqr_update=True, perturb_mode="ema_precond_grad", norm_mode=norm_mode)
    assert set(state.sam) == {"count", "gbar", "g_last"}


def test_past_fsam_first_step_is_the_plain_llqr_step():
    _, train_step, sam_step, state = _setup("past_fsam", **LLQR_ON, perturb_mode="ema_precond_grad")
    xs = _batches(1)
    plain, _ = _run_steps(train_step, jax.tree_util.tree_map(jnp.copy, state), xs)
    first, _ = _run_steps(sam_step, state, xs, jnp.float32(RHO))
    np.testing.assert_array_equal(_flat3(first.params), _flat3(plain.params))


def test_asam_scales_by_weight_magnitude_except_bias():
    _check("asam", LLQR_OFF, 2, llqr_update=False, p=ONES)
    _check("asam", {**LLQR_ON, "asam_eta": 0.3}, 2, llqr_update=True, asam_eta=0.3)


def test_asam_exempts_only_leaves_named_bias():
    params = {"BatchNorm_0": {"scale": -jnp.ones(2), "bias": jnp.full(2, 5.0)}, "Dense_0": {"kernel": jnp.zeros(2)}}
    s = sam.asam_scale(params, 0.01)
    np.testing.assert_allclose(s["BatchNorm_0"]["scale"], 1.01)
    np.testing.assert_allclose(s["BatchNorm_0"]["bias"], 1.0)
    np.testing.assert_allclose(s["Dense_0"]["kernel"], 0.01)


@pytest.mark.parametrize("values", [LLQR_OFF, LLQR_ON, {"use_preconditioner": True,
                                                        "sam_use_preconditioner_on_update": False}],
                         ids=["llqr-off", "llqr-on", "toggle-off"])
def test_fisher_sam_uses_g_over_g2_plus_eta_and_always_a_vanilla_update(values):
    _check("fisher_sam", values, 2, llqr_update=False, p=ONES)


def test_toggle_off_gives_the_vanilla_update_and_keeps_the_llqr_state():
    _check("base_sam", {"use_preconditioner": True, "sam_use_preconditioner_on_update": False,
                        "perturb_mode": "ema_precond_grad"}, 2, llqr_update=False, perturb_mode="ema_precond_grad")


def test_vanilla_update_shares_the_main_optimizer_state():
    """Heavy-ball momentum: a plain LLQR step then a vanilla SAM step; the momentum carries P·g from
    the first step into the second, the LLQR part of the state is untouched, the structure equal."""
    mu = 0.9
    values = {"use_preconditioner": True, "sam_use_preconditioner_on_update": False, "optimizer": "polyak",
              "momentum": mu}
    _, train_step, sam_step, state = _setup("base_sam", **values)
    structure = jax.tree_util.tree_structure(state.opt_state)
    xs0, xs1 = _batches(2, seed=3)
    state, _ = _run_steps(train_step, state, [xs0])
    w1 = _flat3(state.params)
    state, _ = _run_steps(sam_step, state, [xs1], jnp.float32(RHO))
    assert jax.tree_util.tree_structure(state.opt_state) == structure
    blocks = state.opt_state[0].blocks
    np.testing.assert_allclose(_flat3(jax.tree_util.tree_map(lambda b: b["d"], blocks, is_leaf=lambda b: "d" in b)),
                               P_DIAG)
    m0 = P_DIAG * _grad(W0, xs0)
    g_c = _grad(w1, xs1)
    g_p = _grad(w1 + RHO * g_c / np.linalg.norm(g_c), xs1)
    np.testing.assert_allclose(_flat3(state.params), w1 - LR * (mu * m0 + g_p), rtol=2e-5)


def test_rho_is_a_traced_argument():
    _, _, sam_step, state = _setup("base_sam", **LLQR_OFF)
    xs = _batches(2)
    state, _ = _run_steps(sam_step, state, xs[:1], jnp.float32(0.0))
    np.testing.assert_allclose(_flat3(state.params), W0 - LR * _grad(W0, xs[0]), rtol=1e-6)
    state, _ = _run_steps(sam_step, state, xs[1:], jnp.float32(0.3))
    assert sam_step._cache_size() == 1


def test_first_step_flag_not_the_buffer_values_decides_step_zero():
    g = _tree([1.0, 2.0, 3.0])
    buffers = {"count": jnp.zeros([], jnp.int32), "gbar": _tree([5.0, 5.0, 5.0]), "g_last": _tree([9.0, 0.0, 0.0])}
    kw = dict(params=g, g_c=g, rho=1.0, precond=lambda v: v, perturb_mode="ema_grad", norm_mode="euclidean",
              gbar_eps=1e-12, asam_eta=0.0, fisher_sam_eta=0.1)
    unit_g = np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0)
    np.testing.assert_allclose(_flat3(sam.perturbation("base_fsam", buffers=buffers, **kw)), unit_g, rtol=1e-6)
    np.testing.assert_array_equal(_flat3(sam.perturbation("past_fsam", buffers=buffers, **kw)), 0.0)
    later = dict(buffers, count=jnp.ones([], jnp.int32))
    np.testing.assert_allclose(_flat3(sam.perturbation("base_fsam", buffers=later, **kw)),
                               np.array([-4.0, -3.0, -2.0]) / np.sqrt(29.0), rtol=1e-6)


def test_zero_vector_gives_zero_perturbation_in_every_norm_mode():
    z = _tree(np.zeros(3))
    for perturb_mode in sam.PERTURB_MODES:
        for norm_mode in sam.NORM_MODES:
            d = sam.direction(z, perturb_mode=perturb_mode, norm_mode=norm_mode, eps=1e-12, precond=lambda v: v)
            assert np.all(np.isfinite(_flat3(d))) and not np.any(_flat3(d)), (perturb_mode, norm_mode)


# --- invalid combinations --------------------------------------------------------------------------

BAD = [
    ({"sam_mode": "base_sam", "use_preconditioner": False, "sam_use_preconditioner_on_update": True},
     r"sam_mode=base_sam with sam_use_preconditioner_on_update=true needs use_preconditioner=true"),
    ({"sam_mode": "base_fsam", "use_preconditioner": False}, r"sam_mode=base_fsam .* needs use_preconditioner=true"),
    ({"sam_mode": "past_fsam", "use_preconditioner": False}, r"sam_mode=past_fsam .* needs use_preconditioner=true"),
    ({"sam_mode": "asam", "use_preconditioner": False}, r"sam_mode=asam .* needs use_preconditioner=true"),
    ({"sam_mode": "asam", "use_preconditioner": True, "perturb_mode": "ema_precond_grad"},
     r"sam_mode=asam requires perturb_mode=ema_grad \(got perturb_mode=ema_precond_grad\)"),
    ({"sam_mode": "fisher_sam", "perturb_mode": "ema_direction"},
     r"sam_mode=fisher_sam requires perturb_mode=ema_grad \(got perturb_mode=ema_direction\)"),
    ({"sam_mode": "asam", "use_preconditioner": True, "norm_mode": "matrix_norm"},
     r"sam_mode=asam requires norm_mode=euclidean \(got norm_mode=matrix_norm\)"),
    ({"sam_mode": "fisher_sam", "norm_mode": "layer_euclidean"},
     r"sam_mode=fisher_sam requires norm_mode=euclidean \(got norm_mode=layer_euclidean\)"),
]


@pytest.mark.parametrize("values,message", BAD, ids=[f"{v['sam_mode']}-{i}" for i, (v, _) in enumerate(BAD)])
def test_invalid_sam_combinations_are_config_errors(values, message):
    with pytest.raises(ConfigError, match=message):
        build_config(values)


def test_valid_toggles_resolve():
    build_config({"sam_mode": "fisher_sam", "use_preconditioner": False, "sam_use_preconditioner_on_update": True})
    build_config({"sam_mode": "base_fsam", **LLQR_OFF, "perturb_mode": "ema_grad"})
    build_config({"sam_mode": "past_fsam", **LLQR_ON, "perturb_mode": "ema_precond_grad"})


@pytest.mark.parametrize("key,value", [("sam_research_perturb_sign", "descent"),
                                       ("sam_research_base_vector_source", "random_direction")])
def test_research_ablations_fail_before_any_training(tmp_path, key, value):
    cfg = resolve("digits-mlp-smoke", {"sam_mode": "base_sam", **LLQR_OFF, key: value})
    with pytest.raises(ConfigError, match=f"{key}={value} is a research-only SAM ablation"):
        run(cfg, cell_id="f/x/seed42", results_dir=tmp_path, checkpoints_dir=tmp_path, data_root=tmp_path)


# --- the runner on digits ----------------------------------------------------------------------------

SAM_LLQR = {"use_preconditioner": True, "sam_use_preconditioner_on_update": True, "perturb_mode": "ema_precond_grad",
            "update_preconditioner_every": 10, "precond_lr": 0.1}


@pytest.fixture(scope="module")
def data_root(digits_root):
    return digits_root


def _digits_run(tmp_path, data_root, cell, **overrides):
    cfg = resolve("digits-mlp-smoke", overrides)
    run(cfg, cell_id=cell, results_dir=tmp_path / "r", checkpoints_dir=tmp_path / "c", data_root=data_root,
        out=lambda _line: None)
    cell_dir = tmp_path / "r" / "cells" / cell
    events = [json.loads(x) for x in (cell_dir / "metrics.jsonl").read_text().splitlines()]
    for e in events:
        e.pop("elapsed_s")
        e.pop("ms_per_step", None)  # wall-clock timing
    return events, lambda step=None: _checkpointed_state(tmp_path / "c" / cell, step)


def _checkpointed_state(root, step=None):
    """The train state saved at ``step`` (default: the last one) under a cell's checkpoint root."""
    import orbax.checkpoint as ocp

    directory = next(root.glob("**/orbax"))
    step = max(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if step is None else step
    return ocp.StandardCheckpointer().restore(directory / str(step) / "state")


@pytest.mark.slow  # the golden base-sam cell starts SAM at step 5 in the default run
def test_start_sam_after_step_runs_the_plain_llqr_step_and_freezes_buffers(tmp_path, data_root):
    every_ckpt = {"checkpoint_freq": 30, "keep_checkpoints": 3}
    plain, plain_state = _digits_run(tmp_path, data_root, "s/plain/seed42", **SAM_LLQR, **every_ckpt)
    late, late_state = _digits_run(tmp_path, data_root, "s/late/seed42", sam_mode="base_fsam",
                                   start_sam_after_step=30, **SAM_LLQR, **every_ckpt)
    before = [e for e in late if e["step"] < 30 and e["event"] != "final_eval"]
    assert before == [e for e in plain if e["step"] < 30 and e["event"] != "final_eval"]  # losses, evals, P fits
    at_30 = late_state(30)  # the state after 30 updates, all below the threshold
    for (ka, a), (kb, b) in zip(sorted(_flat(plain_state(30)["params"]).items()),
                                sorted(_flat(at_30["params"]).items())):
        assert ka == kb and np.array_equal(a, b), ka
    assert int(at_30["sam"]["count"]) == 0
    assert not any(np.any(x) for x in jax.tree_util.tree_leaves(at_30["sam"]["gbar"]))  # frozen at zero
    final = late_state()
    assert int(final["sam"]["count"]) == 44 - 30  # steps 30..43 were SAM steps
    assert any(np.any(x) for x in jax.tree_util.tree_leaves(final["sam"]["gbar"]))
    train_loss = lambda ev: [(e["step"], e["train_loss"]) for e in ev if e["event"] == "train"]  # noqa: E731
    assert [x for x in train_loss(late) if x[0] >= 30] != [x for x in train_loss(plain) if x[0] >= 30]


def test_fisher_sam_fits_no_preconditioner(tmp_path, data_root):
    events, state = _digits_run(tmp_path, data_root, "s/fisher/seed42", sam_mode="fisher_sam",
                                **{**SAM_LLQR, "perturb_mode": "ema_grad"})
    assert not [e for e in events if e["event"] == "precond"] and int(state()["sam"]["count"]) == 44


RESUME = ["preset=digits-mlp-smoke", "total_epochs=25", "checkpoint_freq=50", "test_eval_freq=50",
          "keep_checkpoints=3", "sam_mode=base_fsam", "use_preconditioner=true",
          "sam_use_preconditioner_on_update=true", "perturb_mode=ema_precond_grad", "update_preconditioner_every=60",
          "perturbation_rho_scheduler=step_warmup", "perturbation_rho_scheduler.ratio=0.5"]


@pytest.mark.slow  # resume and base_fsam+LLQR are each pinned by golden cells in the default run
def test_sigterm_mid_run_with_base_fsam_and_llqr_resumes_bit_exactly(tmp_path, data_root):
    # A persistent compilation cache, filled by the reference run, spares the two later processes
    # their compile time; they run the same compiled programs a fresh compile would produce.
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    cli = lambda d: [sys.executable, "-m", "llqr.train", *RESUME, "--data-root", str(d / "data")]  # noqa: E731
    ref, cut = interrupted_run_matches_uninterrupted(tmp_path, data_root, cli, env, signal.SIGTERM)
    step_a = _final_params(ref / "checkpoints")[0]
    sam_a, sam_b = (_checkpointed_state(d / "checkpoints")["sam"] for d in (ref, cut))
    assert int(sam_a["count"]) == int(sam_b["count"]) == step_a
    for a, b in zip(jax.tree_util.tree_leaves(sam_a), jax.tree_util.tree_leaves(sam_b)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert any(np.any(np.asarray(x)) for x in jax.tree_util.tree_leaves(sam_a["gbar"]))
