"""Reference knobs that must do what they say: each is implemented, or inert and never splits cells."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llqr.config import resolve
from llqr.optim import block_skews
from llqr.train.loop import run
from llqr.train.optimizers import apply_updates, normalize_conv_kernels
from llqr.workflow.matrix import expand


@pytest.fixture(scope="module")
def data_root(digits_root):
    return digits_root


def test_normalize_conv_params_rescales_conv_kernels_before_the_update():
    params = {"conv": {"kernel": jnp.full((3, 3, 2, 4), 2.0), "bias": jnp.full((4,), 3.0)},
              "dense": {"kernel": jnp.full((5, 2), 7.0)}}
    normalised = normalize_conv_kernels(params)
    kernel = normalised["conv"]["kernel"]
    np.testing.assert_allclose(float(jnp.linalg.norm(kernel)), np.sqrt(kernel.size), rtol=1e-6)
    assert jnp.array_equal(normalised["conv"]["bias"], params["conv"]["bias"])  # rank < 4: untouched
    assert jnp.array_equal(normalised["dense"]["kernel"], params["dense"]["kernel"])
    updates = jax.tree_util.tree_map(jnp.ones_like, params)
    on, off = resolve("digits-mlp-smoke", {"normalize_conv_params": True}), resolve("digits-mlp-smoke", {})
    stepped = apply_updates(on, params, updates)
    np.testing.assert_allclose(stepped["conv"]["kernel"], kernel + 1.0, rtol=1e-6)
    assert jnp.array_equal(apply_updates(off, params, updates)["conv"]["kernel"], params["conv"]["kernel"] + 1.0)


def test_block_skews_are_zero_for_symmetric_blocks_and_measure_asymmetric_ones():
    sym = {"layer": {"kernel": {"QA": jnp.eye(3), "QG": jnp.array([[2.0, 1.0], [1.0, 2.0]]), "d": jnp.ones((3, 2))}}}
    out = block_skews(sym)
    assert out["precond_skew_frob"] == 0.0 and out["precond_skew_spectral"] == 0.0
    assert out["precond_skew_frob/layer"] == 0.0
    upper = {"layer": {"P": jnp.array([[1.0, 1.0], [0.0, 1.0]])}}
    out = block_skews(upper)
    # A - A^T = [[0,1],[-1,0]]: |.|_F = sqrt 2, |A + A^T|_F = sqrt(4+1+1+4); spectral 1 / golden ratio
    np.testing.assert_allclose(out["precond_skew_frob"], np.sqrt(2) / np.sqrt(10), rtol=1e-5)
    np.testing.assert_allclose(out["precond_skew_spectral"], 1 / ((1 + np.sqrt(5)) / 2), rtol=1e-4)
    assert block_skews({"layer": {"kernel": {"d": jnp.ones((4,))}}})["precond_skew_frob"] == 0.0  # diagonal: none


@pytest.mark.slow  # the golden llqr-ekfac cell logs the skews at every fit in the default run
def test_measure_asymmetry_logs_skews_at_every_fit(tmp_path, data_root):
    cell = "k/skew/seed42"
    cfg = resolve("digits-mlp-smoke", {"use_preconditioner": True, "block_structure": "e-kfac", "precond_steps": 3,
                                       "update_preconditioner_every": 20, "measure_asymmetry": True})
    run(cfg, cell_id=cell, results_dir=tmp_path / "r", checkpoints_dir=tmp_path / "c", data_root=data_root,
        out=lambda _line: None)
    events = [json.loads(x) for x in (tmp_path / "r" / "cells" / cell / "metrics.jsonl").read_text().splitlines()]
    fits = [e for e in events if e["event"] == "precond"]
    assert [e["step"] for e in fits] == [0, 20, 40]
    for e in fits:
        assert 0.0 <= e["precond_skew_frob"] and 0.0 <= e["precond_skew_spectral"]
        assert any(k.startswith("precond_skew_frob/") for k in e)
    assert fits[-1]["precond_skew_frob"] > 0.0  # fitted Q factors are free, hence not symmetric


def test_fast_paths_knob_is_inert_and_never_splits_cells():
    def surface(value):
        return {"group": "demo", "metric": "test_accuracy", "presets": ["digits-mlp-smoke"], "seeds": [42],
                "axes": {"m": [{"label": "llqr", "set": {"use_preconditioner": True, "llqr_use_fast_paths": value}}]}}

    matrix = expand({"surfaces": {"on": surface(True), "off": surface(False)}})
    assert matrix.surfaces["on"].cell_ids == matrix.surfaces["off"].cell_ids
    assert len(matrix.cells) == 1


def test_fisher_sam_makes_the_llqr_toggle_one_cell_without_a_rule():
    toggle = [{"label": "off", "set": {"use_preconditioner": False, "sam_use_preconditioner_on_update": False}},
              {"label": "on", "set": {"use_preconditioner": True, "sam_use_preconditioner_on_update": True,
                                      "divergence": "newton", "ema_decay": 0.9}}]

    sam = [{"label": mode, "set": {"sam_mode": mode}} for mode in ("base_sam", "fisher_sam")]
    matrix = expand({"surfaces": {"s": {"group": "demo", "metric": "test_accuracy", "presets": ["digits-mlp-smoke"],
                                        "seeds": [42], "axes": {"sam": sam, "llqr": toggle}}}})
    fisher = {e.cell_id for e in matrix.surfaces["s"].entries if e.labels["sam"] == "fisher_sam"}
    assert len(fisher) == 1 and not matrix.cells[fisher.pop()].config["use_preconditioner"]
    assert len(matrix.cells) == 3  # base_sam: the toggle matters there
