"""The grokking preset: the modular-addition data (rule output, split, loader), the grokking
transformer (parameter count from the reference's definition, layout, causality) and a tiny run
of the preset through the runner."""

import hashlib
import json

import jax
import numpy as np
import pytest

from conftest import run_snakemake
from fixtures.models import shapes
from llqr.config import ConfigError, build_config, resolve
from llqr.data import load_dataset, modular
from llqr.models import build_model
from llqr.models.grok_transformer import Block
from llqr.optim.structures import num_params
from llqr.train.loop import run


def reference_count(p: int, dim: int = 128, depth: int = 2, heads: int = 4, head_dim: int = 32, mlp: int = 512) -> int:
    """Parameters of the reference's create_grok_model: Embed(p + 2, dim), a (5, dim) position
    table, ``depth`` blocks (two scale-only LayerNorms, a bias-free qkv Dense, an out Dense, a
    dim -> mlp -> dim MLP) and the head (a scale-only LayerNorm over the 4·dim flattened
    sequence, a Dense to p)."""
    inner = heads * head_dim
    block = 2 * dim + dim * 3 * inner + inner * dim + dim + dim * mlp + mlp + mlp * dim + dim
    return (p + 2) * dim + 5 * dim + depth * block + 4 * dim + 4 * dim * p + p


def pairs(x: np.ndarray) -> set:
    return {(int(a) - modular.OFFSET, int(b) - modular.OFFSET) for a, b in x[:, [0, 2]]}


# --- the data ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rule_outputs(tmp_path_factory):
    """data/mod_sum/p13.npz made by the prepare_modular rule in two separate work directories."""
    out = []
    for name in ("first", "second"):
        work = tmp_path_factory.mktemp(name)
        run_snakemake(["--cores", "1", "data/mod_sum/p13.npz"], work)
        out.append(work)
    return out


def test_rule_output_is_deterministic_and_the_loader_reads_it(rule_outputs):
    first, second = (w / "data" / "mod_sum" / "p13.npz" for w in rule_outputs)
    assert hashlib.sha256(first.read_bytes()).digest() == hashlib.sha256(second.read_bytes()).digest()
    log = json.loads((rule_outputs[0] / "logs" / "data" / "prepare_modular_p13.log").read_text())
    assert log == {"modulus": 13, "train": 101, "test": 68, "classes": 13}
    cfg = build_config({"model": "grok_transformer", "dataset": "mod_sum", "modulus": 13})
    data = load_dataset(cfg, rule_outputs[0] / "data")
    assert data.path == str(first) and data.num_classes == 13 and data.input_shape == (4,)
    assert data.x_train.dtype == np.int32 and data.train_size == 101 and data.test_size == 68


def test_split_covers_every_pair_once_without_overlap(rule_outputs):
    with np.load(rule_outputs[0] / "data" / "mod_sum" / "p13.npz") as f:
        x_train, y_train, x_test, y_test = (f[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    train, test = pairs(x_train), pairs(x_test)
    assert len(train) == len(x_train) and len(test) == len(x_test)  # no pair twice within a split
    assert not train & test and train | test == {(a, b) for a in range(13) for b in range(13)}
    for x, y in ((x_train, y_train), (x_test, y_test)):
        assert (x[:, 1] == modular.OP).all() and (x[:, 3] == modular.EQ).all()
        np.testing.assert_array_equal(y, (x[:, 0] + x[:, 2] - 2 * modular.OFFSET) % 13)


def test_reference_sizes_and_seeded_split(tmp_path):
    counts = modular.prepare(tmp_path / "p97.npz", 97)
    assert counts == {"modulus": 97, "train": 5645, "test": 3764, "classes": 97}  # int(0.6 * 97²) for training
    again = modular.prepare(tmp_path / "again.npz", 97)
    assert again == counts and (tmp_path / "p97.npz").read_bytes() == (tmp_path / "again.npz").read_bytes()


def test_loader_refuses_missing_or_mismatched_files(tmp_path):
    from llqr.data import DataError

    cfg = build_config({"model": "grok_transformer", "dataset": "mod_sum", "modulus": 11})
    with pytest.raises(DataError, match="prepare_modular"):
        load_dataset(cfg, tmp_path)
    modular.prepare(tmp_path / "mod_sum" / "p7.npz", 7)
    (tmp_path / "mod_sum" / "p7.npz").rename(tmp_path / "mod_sum" / "p11.npz")
    with pytest.raises(DataError, match="p=7"):
        load_dataset(cfg, tmp_path)


# --- the model ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset,p,expected", [("grokking", 97, 458_849), ("grokking-tiny", 31, 60_319)])
def test_parameter_count_matches_the_reference_definition(preset, p, expected):
    cfg = resolve(preset)
    assert cfg.modulus == p
    params = shapes(build_model(cfg, num_classes=p), (4,))["params"]
    dim = cfg.grok_dim
    assert num_params(params) == expected == reference_count(p, dim, cfg.grok_depth, 4, dim // 4, 4 * dim)


def test_layout_is_the_references_three_controlled_layers():
    params = shapes(build_model(resolve("grokking"), num_classes=97), (4,))["params"]
    assert sorted(params) == ["layers_0", "layers_1", "layers_2"]
    first, second, head = params["layers_0"], params["layers_1"], params["layers_2"]
    assert set(first) == {"embed", "pos_embedding", "block"} and first["pos_embedding"].shape == (5, 128)
    assert set(second) == set(first["block"])
    attn = second["attn"]
    assert {k: attn[k]["kernel"].shape for k in ("query", "key", "value")} == {k: (128, 4, 32) for k in
                                                                               ("query", "key", "value")}
    assert all(set(attn[k]) == {"kernel"} for k in ("query", "key", "value"))  # no bias on q, k, v
    assert attn["out"]["kernel"].shape == (4, 32, 128) and attn["out"]["bias"].shape == (128,)
    assert set(second["LayerNorm_0"]) == {"scale"} and head["LayerNorm_0"]["scale"].shape == (512,)
    assert head["Dense_0"]["kernel"].shape == (512, 97)


@pytest.mark.slow
def test_attention_is_causal():
    block = Block(heads=2, head_dim=4, mlp_dim=16)
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 8))
    variables = jax.jit(block.init)(jax.random.PRNGKey(1), x)
    changed = x.at[:, 3].set(5.0)
    apply = jax.jit(block.apply)
    a, b = apply(variables, x), apply(variables, changed)
    np.testing.assert_allclose(a[:, :3], b[:, :3], rtol=1e-6, atol=1e-6)
    assert not np.allclose(a[:, 3], b[:, 3])


def test_model_and_dataset_go_together():
    with pytest.raises(ConfigError, match="go together"):
        build_config({"model": "grok_transformer"})
    with pytest.raises(ConfigError, match="go together"):
        build_config({"dataset": "mod_sum"})
    with pytest.raises(ConfigError, match="multiple"):
        resolve("grokking", {"grok_dim": 30})


# --- presets and a tiny run -----------------------------------------------------------------------------


def test_grokking_preset_is_the_references():
    c = resolve("grokking")
    assert (c.optimizer, c.learning_rate, c.weight_decay, c.batch_size, c.total_epochs) == (
        "adamw_b2-98", 1e-3, 0.0, 512, 6050.0)
    assert c.lr_scheduler == {"name": "step_warmup", "ratio": 1e-4, "init_value": 0.0}
    assert (c.precond_batch_size, c.update_preconditioner_every, c.test_eval_freq) == (512, 2500, 1000)
    assert (c.modulus, c.grok_dim, c.grok_depth, c.use_preconditioner) == (97, 128, 2, True)


def tiny_run(tmp_path, **overrides):
    cfg = resolve("grokking", {"modulus": 7, "grok_dim": 8, "grok_depth": 1, "batch_size": 16, "max_steps": 4,
                               "precond_batch_size": 16, "precond_steps": 3, "update_preconditioner_every": 2,
                               "test_eval_freq": 2, "logging_freq": 1, "preempt_handling": False, **overrides})
    summary = run(cfg, cell_id="g/tiny/seed42", results_dir=tmp_path / "results", checkpoints_dir=tmp_path / "ckpt",
                  data_root=tmp_path / "data", prepare_missing=True, out=lambda _line: None)
    assert summary["status"] == "ok" and summary["steps"] == 4
    assert (tmp_path / "data" / "mod_sum" / "p7.npz").is_file()
    lines = (tmp_path / "results" / "cells" / "g/tiny/seed42" / "metrics.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert all(np.isfinite(e["train_loss"]) and 0 <= e["train_accuracy"] <= 100 for e in events
               if e["event"] == "train")
    assert 0 <= events[-1]["test_accuracy"] <= 100 and np.isfinite(events[-1]["test_loss"])
    return events


@pytest.mark.slow  # the demo surfaces demo_grokking(_train) run it through the workflow in the default set
def test_tiny_grokking_run(tmp_path):
    """The preset's AdamW path; compiling the LLQR fit on CPU takes ~20 s more (the slow test)."""
    events = tiny_run(tmp_path, use_preconditioner=False)
    assert not [e for e in events if e["event"] == "precond"]


@pytest.mark.slow
def test_tiny_grokking_run_with_llqr(tmp_path):
    events = tiny_run(tmp_path)
    assert [e["step"] for e in events if e["event"] == "precond"] == [0, 2]


@pytest.mark.slow
def test_llqr_fit_on_the_grokking_model():
    """One diagonal fit (3 inner steps, compiled at XLA's lowest optimisation level): a block per
    parameter array, finite, cost not increasing, and P moved in each controlled layer."""
    from llqr.optim import init_blocks, make_llqr_fit

    model = build_model(resolve("grokking", {"grok_dim": 8, "grok_depth": 1}), num_classes=7)
    cfg = build_config({"precond_steps": 3, "block_structure": "diagonal"})
    x = np.stack([np.arange(6) % 7 + 2, np.zeros(6), np.arange(6) // 2 + 2, np.ones(6)], axis=1).astype(np.int32)
    y = (x[:, 0] + x[:, 2] - 4) % 7
    params = jax.jit(model.init)(jax.random.PRNGKey(0), x)["params"]
    fit = make_llqr_fit(lambda p, _bs, xx: model.apply({"params": p}, xx), cfg)
    args = (init_blocks("diagonal", params), params, {}, x, y, np.float32(1e-3), np.float32(0.0))
    compiled = fit.lower(*args).compile(compiler_options={"xla_backend_optimization_level": 0})
    new, first, last = jax.device_get(compiled(*args))
    assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(args[0])
    assert all(np.all(np.isfinite(b)) for b in jax.tree_util.tree_leaves(new))
    assert np.isfinite(float(first)) and float(last) <= float(first) + 1e-6 * abs(float(first))
    for layer in ("layers_0", "layers_1"):
        assert any(np.any(b != 1) for b in jax.tree_util.tree_leaves(new[layer])), layer
