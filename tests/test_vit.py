"""ViT-Ti/16 (vit_ti16) and the LLQR code's two CIFAR-100 AdamW presets: the parameter count
from the reference's definition, the reference's controlled layers, the weight-decay mask,
dropout only in training, and a tiny run of each preset through the runner (on a fake CIFAR-100
archive, with the model shrunk: the full ViT-Ti or ResNet-18 takes minutes to compile on CPU)."""

import functools
import json

import jax
import numpy as np
import pytest

from fixtures.cifar import write_archive
from fixtures.models import shapes
from llqr.config import build_config, resolve
from llqr.models import build_model, resnet18, vit
from llqr.optim.structures import num_params
from llqr.train.loop import run
from llqr.train.optimizers import decay_mask

CIFAR = (32, 32, 3)


def reference_count(classes: int, image: int = 32, patch: int = 4, dim: int = 192, depth: int = 12,
                    mlp: int = 768) -> int:
    """Parameters of the reference's ViT-Ti/16: a patch Conv with bias, a class token, a position
    embedding over patches + 1 tokens; per block two LayerNorms, q/k/v/out projections with
    biases, fc1 and fc2; a final LayerNorm and a Dense head."""
    tokens = (image // patch) ** 2 + 1
    stem = patch * patch * 3 * dim + dim + dim + tokens * dim
    block = 2 * 2 * dim + 4 * (dim * dim + dim) + dim * mlp + mlp + mlp * dim + dim
    return stem + depth * block + 2 * dim + dim * classes + classes


@pytest.mark.parametrize("classes,image,expected", [(100, 32, 5_380_132), (10, 32, 5_362_762),
                                                    (1000, 224, 5_717_416)])
def test_parameter_count_matches_the_reference_definition(classes, image, expected):
    model = build_model(build_config({"model": "vit_ti16"}), num_classes=classes)
    patch = 16 if classes == 1000 else 4
    assert model.patch == patch
    count = num_params(shapes(model, (image, image, 3))["params"])
    assert count == expected == reference_count(classes, image, patch)


def test_controlled_layers_are_the_references_stages():
    model = build_model(build_config({"model": "vit_ti16"}), num_classes=100)
    params = shapes(model, CIFAR)["params"]
    blocks = [5 + 9 * b + i for b in range(12) for i in (0, 1, 3, 4, 7)]  # attn LN, attn, MLP LN, fc1, fc2
    assert sorted(params) == sorted(f"layers_{i}" for i in [0, 2, 3, *blocks, 113, 116])
    tags = vit.controlled_tags(model)
    assert set(tags) == set(params) and tags["layers_6"] == "block_0_attn" and tags["layers_116"] == "logits"
    attn = params["layers_6"]["MultiHeadDotProductAttention_0"]
    assert {k: attn[k]["kernel"].shape for k in ("query", "key", "value")} == {k: (192, 3, 64) for k in
                                                                               ("query", "key", "value")}
    assert attn["out"]["kernel"].shape == (3, 64, 192)
    assert params["layers_2"]["cls"].shape == (1, 1, 192) and params["layers_3"]["pos_embedding"].shape == (1, 65, 192)
    assert params["layers_0"]["Conv_0"]["kernel"].shape == (4, 4, 3, 192)


def test_weight_decay_spares_norms_and_biases():
    cfg = resolve("vit-ti16-cifar100-adamw")
    params = shapes(build_model(cfg, num_classes=100), CIFAR)["params"]
    mask = decay_mask(params, cfg.wd_mask)
    assert mask["layers_5"]["LayerNorm_0"] == {"scale": False, "bias": False}
    assert mask["layers_9"]["Dense_0"] == {"kernel": True, "bias": False}
    assert mask["layers_2"]["cls"] and mask["layers_3"]["pos_embedding"]


@pytest.mark.slow
def test_dropout_only_in_training():
    model = vit.ViT(num_classes=5, dim=12, depth=1, heads=3, mlp_dim=24, dropout_rate=0.5, attention_dropout_rate=0.5)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
    variables = jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(0), x)
    head = next(k for k, tag in vit.controlled_tags(model).items() if tag == "logits")
    kernel = variables["params"][head]["Dense_0"]["kernel"]
    assert not np.any(kernel)  # the reference's zero head: make it random so that dropout shows in the output
    variables["params"][head]["Dense_0"]["kernel"] = np.random.default_rng(1).normal(size=kernel.shape)
    apply = jax.jit(lambda v, x, key, train: model.apply(v, x, train=train, rngs={"dropout": key}),
                    static_argnames="train")
    keys = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
    np.testing.assert_array_equal(apply(variables, x, keys[0], False), apply(variables, x, keys[1], False))
    assert not np.allclose(apply(variables, x, keys[0], True), apply(variables, x, keys[1], True))


def test_presets_are_the_references():
    v = resolve("vit-ti16-cifar100-adamw")
    assert (v.model, v.dataset, v.optimizer, v.learning_rate, v.weight_decay, v.wd_mask) == (
        "vit_ti16", "cifar100", "adamw", 1e-3, 0.3, ["Norm", "bias"])
    assert (v.batch_size, v.total_epochs, v.label_smoothing, v.precond_batch_size, v.dropout_rate) == (
        256, 300.0, 0.1, 256, 0.1)
    assert v.lr_scheduler == {"name": "warmup_cosine_decay", "init_value": 1e-5, "warmup_epochs": 5.0,
                              "t_max": 300.0, "eta_min": 0.0}
    r = resolve("resnet18-cifar100-adamw")
    assert (r.model, r.optimizer, r.learning_rate, r.weight_decay, r.wd_mask) == (
        "resnet18", "adam", 3e-3, 1e-2, ["Norm", "bias"])
    assert (r.batch_size, r.total_epochs, r.precond_batch_size, r.update_preconditioner_every) == (
        128, 200.0, 128, 1000)
    assert r.lr_scheduler == {"name": "warmup_cosine_decay", "init_value": 1e-5, "warmup_epochs": 5.0,
                              "t_max": 200.0, "eta_min": 0.0}


SMALL = {  # the presets' models at test size, swapped in where build_model looks them up
    "vit-ti16-cifar100-adamw": (vit, "ViT", dict(dim=12, depth=1, heads=3, mlp_dim=24, patch=8)),
    "resnet18-cifar100-adamw": (resnet18, "ResNet18", dict(width=4)),
}


@pytest.fixture(scope="module")
def cifar100_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    from llqr.data.cifar import SPECS

    write_archive(root / "cifar100" / "raw" / SPECS["cifar100"].archive, "cifar100", per_file=16)
    return root


def tiny_run(tmp_path, root, monkeypatch, preset, **overrides):
    module, name, small = SMALL[preset]
    full = getattr(module, name)
    monkeypatch.setattr(module, name, lambda **kw: full(**{**kw, **small}))
    cfg = resolve(preset, {"batch_size": 8, "eval_batch_size": 16, "precond_batch_size": 8, "max_steps": 3,
                           "precond_steps": 2,
                           "update_preconditioner_every": 2, "test_eval_freq": 2, "logging_freq": 1,
                           "preempt_handling": False, **overrides})
    summary = run(cfg, cell_id="c/tiny/seed42", results_dir=tmp_path / "results", checkpoints_dir=tmp_path / "ckpt",
                  data_root=root, out=lambda _line: None)
    assert summary["status"] == "ok" and summary["steps"] == 3
    lines = (tmp_path / "results" / "cells" / "c/tiny/seed42" / "metrics.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert all(np.isfinite(e["train_loss"]) for e in events if e["event"] == "train")
    assert 0 <= events[-1]["test_accuracy"] <= 100
    return events


@pytest.mark.slow  # ViT-Ti/16 forward, backward and one optimizer step stay in test_study_models
def test_tiny_vit_run(tmp_path, cifar100_root, monkeypatch):
    """The preset's optimizer, schedule, mask and smoothing; dropout (test_dropout_only_in_training)
    and LLQR off here: on CPU their compiles take ~20 s each (the slow test has both)."""
    events = tiny_run(tmp_path, cifar100_root, monkeypatch, "vit-ti16-cifar100-adamw", use_preconditioner=False,
                      dropout_rate=0.0)
    assert not [e for e in events if e["event"] == "precond"]


def test_tiny_resnet18_adam_run_on_an_mlp(tmp_path, cifar100_root, monkeypatch):
    """The preset's Adam with masked coupled L2 and warmup-cosine schedule on CIFAR-100, with a
    one-layer MLP in place of ResNet-18 (whose CPU compile takes a minute: the slow test's)."""
    tiny_run(tmp_path, cifar100_root, monkeypatch, "resnet18-cifar100-adamw", model="mlp", mlp_hidden=[16],
             use_preconditioner=False)


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(SMALL))
def test_tiny_run_with_llqr(tmp_path, cifar100_root, monkeypatch, preset):
    events = tiny_run(tmp_path, cifar100_root, monkeypatch, preset)
    assert [e["step"] for e in events if e["event"] == "precond"] == [0, 2]
