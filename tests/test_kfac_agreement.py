"""measure_kfac_agreement: IKFAC's direction against the KFAC direction it approximates."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llqr.config import resolve
from llqr.optim import singd
from llqr.optim.kfac_agreement import agreement, find_singd_state, kfac_direction, layer_directions

LAM = 0.1


def _layer(seed: int = 0):
    """A Dense layer (3 inputs + bias, 2 outputs): gradient tree, SPD factors A (4x4), G (2x2)."""
    rng = np.random.default_rng(seed)
    grads = {"Dense_0": {"kernel": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
                         "bias": jnp.asarray(rng.normal(size=(2,)), jnp.float32)}}
    a, g = rng.normal(size=(16, 4)), rng.normal(size=(16, 2))
    factors = {("Dense_0", "kernel"): (jnp.asarray(a.T @ a / 16, jnp.float32), jnp.asarray(g.T @ g / 16, jnp.float32))}
    return grads, factors


@jax.jit
def _scores(state, grads, factors) -> dict:
    return agreement(layer_directions(state, grads, factors))


@jax.jit
def _refreshed(state, factors, grads, n: int):
    """``n`` IKFAC refreshes of ``state`` on the same factors."""
    return jax.lax.fori_loop(0, n, lambda _, s: singd.refresh(s, factors, grads), state)


def test_agreement_is_exact_at_ikfacs_fixed_point_and_grows_towards_it():
    grads, factors = _layer()
    (A, G), = factors.values()
    state = singd.scale_by_singd(damping=LAM, lr_cov=0.2, kfac_like=True).init(grads)
    # K Kᵀ = (A + λI)⁻¹ and C Cᵀ = (G + λI)⁻¹ exactly: K, C the Cholesky factors of the inverses
    exact = {k: lay._replace(K=jnp.linalg.cholesky(jnp.linalg.inv(A + LAM * jnp.eye(4))),
                             C=jnp.linalg.cholesky(jnp.linalg.inv(G + LAM * jnp.eye(2))))
             for k, lay in state.layers.items()}
    at_fixed_point = _scores(state.replace(layers=exact), grads, factors)
    assert float(at_fixed_point["cos"]) == pytest.approx(1.0, abs=1e-5) and at_fixed_point["rel"] < 1e-4
    assert float(at_fixed_point["cos_min"]) == pytest.approx(1.0, abs=1e-5)
    # IKFAC's own refreshes on these factors, from K = C = I: the agreement rises to the fixed point's
    scores = [_scores(_refreshed(state, factors, grads, n), grads, factors) for n in map(jnp.int32, (0, 2, 4, 6, 200))]
    cos, rel = [float(s["cos"]) for s in scores], [float(s["rel"]) for s in scores]
    assert cos[0] < 0.99 and all(b > a for a, b in zip(cos, cos[1:])) and all(b < a for a, b in zip(rel, rel[1:]))
    assert cos[-1] == pytest.approx(1.0, abs=1e-5) and rel[-1] < 1e-4
    # the reference is KFAC with λ on each factor (scale_by_kfac's "plain" damping)
    X = jnp.concatenate([grads["Dense_0"]["kernel"], grads["Dense_0"]["bias"][None]], axis=0)
    np.testing.assert_allclose(kfac_direction(A, G, X, LAM),
                               jnp.linalg.inv(A + LAM * jnp.eye(4)) @ X @ jnp.linalg.inv(G + LAM * jnp.eye(2)),
                               rtol=1e-4)
    assert find_singd_state(((), state)) is state and find_singd_state(((), ())) is None


@pytest.mark.slow
def test_an_ikfac_run_logs_the_agreement_and_it_improves(tmp_path, digits_root):
    """A 20-step digits IKFAC run (λ = 0.1, β1 = 0.2, factors every step) evaluated every 5 steps:
    the fields are in every evaluation and the final metrics, and cos rises as K, C converge. With
    the key off no field appears, and the training is the same step for step."""
    from llqr.train.loop import run

    base = {"use_preconditioner": False, "optimizer": "ikfac", "learning_rate": 0.01, "factor_update_every": 1,
            "factor_damping": LAM, "lr_cov": 0.2, "max_steps": 20, "test_eval_freq": 5}
    events = {}
    for on in (True, False):
        cell = f"k/{'on' if on else 'off'}/seed42"
        summary = run(resolve("digits-mlp-smoke", {**base, "measure_kfac_agreement": on}), cell_id=cell,
                      results_dir=tmp_path / "r", checkpoints_dir=tmp_path / "c", data_root=digits_root,
                      out=lambda _line: None)
        assert summary["status"] == "ok", summary
        lines = (tmp_path / "r" / "cells" / cell / "metrics.jsonl").read_text().splitlines()
        events[on] = [json.loads(x) for x in lines]
        fields = {k for k in summary["final_metrics"] if k.startswith("kfac_agreement")}
        assert fields == ({"kfac_agreement_cos", "kfac_agreement_rel", "kfac_agreement_cos_min"} if on else set())
    evals = [e for e in events[True] if e["event"] == "eval"]
    assert len(evals) == 4 and all(0 < e["kfac_agreement_cos_min"] <= e["kfac_agreement_cos"] <= 1 for e in evals)
    assert evals[-1]["kfac_agreement_cos"] > evals[0]["kfac_agreement_cos"]
    assert evals[-1]["kfac_agreement_rel"] < evals[0]["kfac_agreement_rel"]
    assert not any(k.startswith("kfac") for e in events[False] for k in e)
    train = {on: [e["train_loss"] for e in events[on] if e["event"] == "train"] for on in events}
    assert train[True] == train[False]


def test_the_report_reads_the_agreement_from_the_evaluations(tmp_path):
    from llqr.report.collect import read_summary
    from llqr.workflow.surface_spec import METRICS

    assert METRICS["kfac_agreement_cos"] == "max" and METRICS["kfac_agreement_rel"] == "min"
    cell = tmp_path / "cells" / "k" / "seed42"
    cell.mkdir(parents=True)
    (cell / "summary.json").write_text(json.dumps({"status": "ok", "metric": "test_accuracy",
                                                   "final": {"value": 90.0, "step": 20}}))
    events = [{"event": "train", "step": 5, "train_loss": 1.0},
              {"event": "eval", "step": 10, "kfac_agreement_cos": 0.9, "kfac_agreement_rel": 0.5},
              {"event": "eval", "step": 15, "kfac_agreement_cos": 0.95, "kfac_agreement_rel": 0.3},
              {"event": "final_eval", "step": 20, "kfac_agreement_cos": 0.93, "kfac_agreement_rel": 0.4}]
    (cell / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    cos = read_summary(tmp_path, "k/seed42", "kfac_agreement_cos", "max")
    rel = read_summary(tmp_path, "k/seed42", "kfac_agreement_rel", "min")
    assert (cos["final"], cos["best"], cos["best_step"]) == (0.93, 0.95, 15)
    assert (rel["final"], rel["final_step"], rel["best"], rel["best_step"]) == (0.4, 20, 0.3, 15)
