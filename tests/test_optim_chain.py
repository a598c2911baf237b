"""Main-optimizer details: weight-decay masks, coupled vs decoupled decay, gradient accumulation."""

import jax
import jax.numpy as jnp
import numpy as np

from llqr.config import build_config
from llqr.data import digits
from llqr.train.optimizers import build_main_tx, decay_mask

PARAMS = {"Dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}, "LayerNorm_0": {"scale": jnp.ones(2)}}


def test_mask_excludes_any_matching_key_part():
    mask = decay_mask(PARAMS, ["Norm", "bias"])
    assert mask == {"Dense_0": {"kernel": True, "bias": False}, "LayerNorm_0": {"scale": False}}
    assert all(jax.tree_util.tree_leaves(decay_mask(PARAMS, None)))


def _update(cfg_values, grads):
    cfg = build_config(cfg_values)
    tx = build_main_tx(cfg, cfg.learning_rate)
    updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
    return updates


def test_coupled_l2_for_sgd_respects_the_mask():
    zero = jax.tree_util.tree_map(jnp.zeros_like, PARAMS)
    up = _update({"optimizer": "sgd", "learning_rate": 0.5, "weight_decay": 0.1, "wd_mask": ["bias"]}, zero)
    np.testing.assert_allclose(up["Dense_0"]["kernel"], -0.5 * 0.1 * np.ones((2, 2)))
    np.testing.assert_allclose(up["Dense_0"]["bias"], 0.0)
    np.testing.assert_allclose(up["LayerNorm_0"]["scale"], -0.05)


def test_polyak_is_heavy_ball_and_sgd_has_no_momentum():
    g = jax.tree_util.tree_map(jnp.ones_like, PARAMS)
    for name, second in (("polyak", -0.1 * (1 + 0.9)), ("sgd", -0.1)):
        cfg = build_config({"optimizer": name, "learning_rate": 0.1, "momentum": 0.9})
        tx = build_main_tx(cfg, cfg.learning_rate)
        state = tx.init(PARAMS)
        _, state = tx.update(g, state, PARAMS)
        up, _ = tx.update(g, state, PARAMS)
        np.testing.assert_allclose(up["Dense_0"]["bias"], second, rtol=1e-6)


def test_adamw_decay_is_decoupled():
    zero = jax.tree_util.tree_map(jnp.zeros_like, PARAMS)
    up = _update({"optimizer": "adamw", "learning_rate": 0.5, "weight_decay": 0.1}, zero)
    np.testing.assert_allclose(up["Dense_0"]["kernel"], -0.5 * 0.1, rtol=1e-6)  # lr * wd * param, no Adam scaling


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    from llqr.config import resolve
    from llqr.train.loop import run

    digits.prepare(tmp_path / "digits" / digits.FILENAME)
    finals = []
    for i, (bs, acc) in enumerate(((32, 2), (64, 1))):
        cfg = resolve("digits-mlp-smoke", {"batch_size": bs, "grad_acc_steps": acc})
        s = run(cfg, cell_id=f"acc/{i}/seed42", results_dir=tmp_path / "r", checkpoints_dir=tmp_path / "c",
                data_root=tmp_path, out=lambda _l: None)
        finals.append((s["total_steps"], s["final_metrics"]["test_loss"]))
    (steps_a, loss_a), (steps_b, loss_b) = finals
    assert steps_a == steps_b
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-4)
