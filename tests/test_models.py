"""The vision models: exact parameter counts, controlled-layer layout, forward/backward, BatchNorm
modes, dtypes, and the LLQR diagonal fit on small instances.

Parameters for the forward/backward checks are drawn on the host from ``jax.eval_shape`` shapes
instead of ``model.init``: on CPU, XLA compiles every threefry draw of the Flax initialisers
separately and slowly, which would dominate these tests (``test_real_init_*`` covers init).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fixtures.models import host_variables, shapes
from llqr.config import ConfigError, build_config
from llqr.models import build_model
from llqr.models.pyramidnet import PyramidNet, unit_widths
from llqr.models.resnet18 import ResNet18
from llqr.models.resnet50 import ResNet50
from llqr.models.stages import layer_tags
from llqr.models.vgg import VGG16BN
from llqr.models.wide_resnet import WideResNet
from llqr.optim.losses import smoothed_cross_entropy
from llqr.optim.structures import num_params as n_params

CIFAR = (32, 32, 3)

# (model key, extra config, classes, input shape, exact parameter count)
COUNTS = [
    ("resnet18", {}, 10, CIFAR, 11_173_962),
    ("resnet18", {}, 100, CIFAR, 11_220_132),
    # the HyperbolicLR study's ResNetCIFAR: torchvision's counts (21,797,672 / 25,557,032 at K=1000) with the
    # 7x7 stem conv (9,408) replaced by a 3x3 one (1,728) and the head at K=10
    ("resnet34", {}, 10, CIFAR, 21_282_122),
    ("resnet50_cifar", {}, 10, CIFAR, 23_520_842),
    ("vgg16bn", {}, 10, CIFAR, 15_253_578),
    ("vgg16bn", {}, 100, CIFAR, 15_299_748),
    ("pyramidnet110", {}, 10, CIFAR, 18_323_787),
    ("pyramidnet110", {}, 100, CIFAR, 18_426_837),
    ("resnet50", {}, 1000, (224, 224, 3), 25_557_032),
    ("wide_resnet28x10", {}, 10, CIFAR, 46_160_474),
    ("wide_resnet28x10", {}, 100, CIFAR, 46_218_164),
    ("wide_resnet28x10", {"wrn_layout": "standard"}, 10, CIFAR, 36_479_194),
    ("wide_resnet28x10", {"wrn_layout": "standard"}, 100, CIFAR, 36_536_884),
]


COUNTS_INPUT = {name: shape for name, _e, _k, shape, _n in COUNTS}


@functools.cache
def configured(name: str, extra: tuple, classes: int):
    """(model built from a config, its variable shapes), shared by the count and layout tests."""
    model = build_model(build_config({"model": name, **dict(extra)}), num_classes=classes)
    return model, shapes(model, COUNTS_INPUT[name])


@pytest.mark.parametrize("name,extra,classes,_shape,expected", COUNTS,
                         ids=[f"{c[0]}-{c[2]}{'-' + c[1]['wrn_layout'] if c[1] else ''}" for c in COUNTS])
def test_parameter_count_is_exact(name, extra, classes, _shape, expected):
    _model, variables = configured(name, tuple(extra.items()), classes)
    assert n_params(variables["params"]) == expected


def test_resnet50_count_does_not_depend_on_input_size():
    assert n_params(shapes(ResNet50(), (64, 64, 3))["params"]) == 25_557_032


# Stage counts: (controlled layers = top-level groups, of which BatchNorm)
LAYOUT = {
    "resnet18": (20 + 20 + 1, 20),  # 17 + 3 projection convs, one BN each, one Dense
    "resnet50": (53 + 53 + 1, 53),  # 1 + 48 + 4 projection convs
    "vgg16bn": (13 + 13 + 3, 13),
    "wide_resnet28x10": (34 + 31 + 1, 31),  # stem + 3 x (5 x 2 + skip) convs; 2 BN per unit + head
    "pyramidnet110": (109 + 146 + 1, 146),  # stem + 36 x 3 convs; stem + 36 x 4 + head BN
}


@pytest.mark.parametrize("name", sorted(LAYOUT))
def test_every_top_level_group_is_one_conv_bn_or_dense(name):
    model, variables = configured(name, (), 1000 if name == "resnet50" else 10)
    params, stats = variables["params"], variables["batch_stats"]
    groups, bn = LAYOUT[name]
    assert len(params) == groups and len(stats) == bn
    assert set(layer_tags(model)) == set(params)
    for key, group in params.items():
        assert key.startswith("layers_")
        (module,) = group  # exactly one module per controlled layer
        assert module in ("Conv_0", "BatchNorm_0", "Dense_0"), (key, module)
        assert (module == "BatchNorm_0") == (key in stats)
        if module == "BatchNorm_0":
            assert set(group[module]) == {"scale", "bias"} and set(stats[key][module]) == {"mean", "var"}
    tags = list(layer_tags(model).values())
    assert tags[-1] == "logits" and len(set(tags)) == len(tags)


def test_batchnorm_momenta_follow_the_reference():
    def momenta(model):
        return {s.momentum for s in model.stages() if type(s).__name__ == "BatchNorm"}

    assert momenta(ResNet18()) == {0.99} and momenta(ResNet50()) == {0.99}
    assert momenta(VGG16BN()) == {0.9} and momenta(WideResNet()) == {0.9} and momenta(PyramidNet()) == {0.9}


def test_pyramidnet_widths():
    planes = [p for p, _s in unit_widths(270, 12, 16)]
    assert planes[:4] == [24, 31, 38, 46]  # round(23.5) = 24, round(38.5) = 38: round-half-to-even
    assert planes[-1] * 4 == 1144 and len(planes) == 36
    assert [s for _p, s in unit_widths(270, 12, 16)].count(2) == 2


def test_dtypes():
    small = ResNet18(width=4)
    v = shapes(small, CIFAR)
    assert {x.dtype for x in jax.tree_util.tree_leaves(v)} == {jnp.dtype("float32")}
    half = ResNet18(width=4, dtype=jnp.bfloat16)
    x = jax.ShapeDtypeStruct((2, *CIFAR), jnp.float32)
    out = jax.eval_shape(lambda v, x: half.apply(v, x, train=False), shapes(half, CIFAR), x)
    assert out.dtype == jnp.float32  # bfloat16 compute, float32 params, log-probs in float32
    assert {x.dtype for x in jax.tree_util.tree_leaves(shapes(half, CIFAR)["params"])} == {jnp.dtype("float32")}
    p16 = shapes(ResNet18(width=4, param_dtype=jnp.bfloat16), CIFAR)["params"]
    assert {x.dtype for x in jax.tree_util.tree_leaves(p16)} == {jnp.dtype("bfloat16")}


def test_build_model_options():
    wrn = build_model(build_config({"model": "wide_resnet28x10", "wrn_layout": "standard", "dropout_rate": 0.3}), 10)
    assert wrn.units_per_group == 4 and wrn.dropout_rate == 0.3
    assert build_model(build_config({"model": "wide_resnet28x10"}), 10).units_per_group == 5
    assert build_model(build_config({"model": "vgg16bn"}), 100).dropout_rate == 0.5
    with pytest.raises(ConfigError, match="vgg16bn's two dropouts are fixed"):
        build_model(build_config({"model": "vgg16bn", "dropout_rate": 0.1}), 10)
    with pytest.raises(ConfigError, match="wrn_layout"):
        build_config({"model": "wide_resnet28x10", "wrn_layout": "wrn-28"})


# ---------------------------------------------------------------------------------------------
# forward / backward


def logsumexp(a):
    a = np.asarray(a, np.float64)
    m = a.max(axis=-1, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis=-1, keepdims=True)))[..., 0]


def fast_jit(fn, *args):
    """``fn`` compiled for ``args`` at XLA's lowest backend optimisation level (about half the
    compile time on CPU; these tests run each function once or twice)."""
    return jax.jit(fn).lower(*args).compile(compiler_options={"xla_backend_optimization_level": 0})


def check_forward_backward(model, input_shape, classes, batch=2, dropout=False):
    """One jitted train step (value and grad, BN in batch mode) and one eval forward; every check
    runs on host copies (an eager jnp op per leaf would compile a kernel per shape)."""
    variables = host_variables(model, input_shape)
    params = variables["params"]
    # running stats away from any batch's (mean 0.5, var 2): then every BN's train step moves them
    stats = jax.tree_util.tree_map_with_path(
        lambda path, a: np.full_like(a, 0.5 if str(getattr(path[-1], "key", "")) == "mean" else 2.0),
        variables["batch_stats"])
    rng = np.random.default_rng(1)
    x = rng.normal(size=(batch, *input_shape)).astype(np.float32)
    y = np.arange(batch, dtype=np.int32) % classes

    def train(params, stats, x, y, key):
        def loss(p):
            out, mut = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                                   rngs={"dropout": key}, mutable=["batch_stats"])
            return smoothed_cross_entropy(out, y), (out, mut["batch_stats"])

        return jax.value_and_grad(loss, has_aux=True)(params)

    def evaluate(params, stats, x):
        return model.apply({"params": params, "batch_stats": stats}, x, train=False, mutable=["batch_stats"])

    keys = np.array([[0, 3], [0, 4]], np.uint32)  # two raw dropout keys
    step = fast_jit(train, params, stats, x, y, keys[0])
    (loss, (out, new_stats)), grads = jax.device_get(step(params, stats, x, y, keys[0]))
    (_loss, (out_other_key, _s)), _g = jax.device_get(step(params, stats, x, y, keys[1]))
    assert np.array_equal(out, out_other_key) != dropout  # dropout draws masks in train mode only
    assert out.shape == (batch, classes) and out.dtype == np.float32
    assert np.isfinite(loss) and np.all(np.isfinite(out))
    np.testing.assert_allclose(logsumexp(out), 0.0, atol=1e-5)
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(jax.device_get(params))
    for key, group in grads.items():  # every controlled layer is on the path to the loss
        leaves = jax.tree_util.tree_leaves(group)
        assert all(np.all(np.isfinite(g)) for g in leaves), key
        assert any(np.any(g != 0) for g in leaves), key
    for key in stats:  # train mode moves every running average
        assert not np.allclose(new_stats[key]["BatchNorm_0"]["mean"], 0.5), key

    ev_fn = fast_jit(evaluate, params, new_stats, x)
    ev, mut = jax.device_get(ev_fn(params, new_stats, x))
    assert ev.shape == (batch, classes)
    np.testing.assert_allclose(logsumexp(ev), 0.0, atol=1e-5)
    jax.tree_util.tree_map(np.testing.assert_array_equal, mut["batch_stats"], new_stats)  # eval: no update
    other = x.copy()
    other[1:] = rng.normal(size=(batch - 1, *input_shape))
    ev2, _ = jax.device_get(ev_fn(params, new_stats, other))  # running stats: a row does not see the others
    np.testing.assert_allclose(ev2[0], ev[0], rtol=1e-5, atol=1e-5)


SMALL = {  # the same code paths (projections, forks, pooled/padded shortcuts, dropout) at small size
    "resnet18": (lambda k: ResNet18(num_classes=k, width=4), CIFAR),
    "resnet50": (lambda k: ResNet50(num_classes=k, width=4, blocks=(1, 2, 1, 1)), CIFAR),
    "vgg16bn": (lambda k: VGG16BN(num_classes=k, width_divisor=16), CIFAR),
    "wide_resnet28x10": (lambda k: WideResNet(num_classes=k, widen=1, base=4, units_per_group=2,
                                              dropout_rate=0.1), CIFAR),
    "pyramidnet110": (lambda k: PyramidNet(num_classes=k, alpha=12, units_per_stage=2, stem=4), CIFAR),
}


# by default resnet18 (projection shortcuts, BN modes); the longer compiles are in the slow set
SLOW_SMALL = ("resnet50", "pyramidnet110", "vgg16bn", "wide_resnet28x10")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_SMALL else n
                                  for n in sorted(SMALL)])
def test_small_forward_backward_and_batchnorm_modes(name):
    make, input_shape = SMALL[name]
    check_forward_backward(make(7), input_shape, 7, dropout=name in ("vgg16bn", "wide_resnet28x10"))


FULL = {
    "resnet18": (lambda k: ResNet18(num_classes=k), CIFAR, 100),
    "resnet50": (lambda k: ResNet50(num_classes=k), (64, 64, 3), 1000),
    "vgg16bn": (lambda k: VGG16BN(num_classes=k), CIFAR, 100),
    "wide_resnet28x10": (lambda k: WideResNet(num_classes=k), CIFAR, 10),
    "pyramidnet110": (lambda k: PyramidNet(num_classes=k), CIFAR, 100),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FULL))
def test_full_size_forward_backward_and_batchnorm_modes(name):
    make, input_shape, classes = FULL[name]
    check_forward_backward(make(classes), input_shape, classes, dropout=name == "vgg16bn")


@pytest.mark.slow
def test_real_init_follows_flax_defaults():
    model = ResNet18(num_classes=10, width=8)
    v = jax.jit(lambda k, x: model.init(k, x, train=False))(jax.random.PRNGKey(42), jnp.zeros((1, *CIFAR)))
    for key, group in v["params"].items():
        (module,) = group
        leaves = group[module]
        if module == "BatchNorm_0":
            assert np.all(leaves["scale"] == 1) and np.all(leaves["bias"] == 0)
            assert np.all(v["batch_stats"][key][module]["var"] == 1)
        elif module == "Dense_0":
            assert np.all(leaves["bias"] == 0)
        else:
            assert set(leaves) == {"kernel"}
            k = np.asarray(leaves["kernel"])
            np.testing.assert_allclose(k.std(), np.prod(k.shape[:-1]) ** -0.5, rtol=0.3)


# ---------------------------------------------------------------------------------------------
# LLQR diagonal fit on small instances


def check_llqr_fit(model, input_shape, classes, divergence="ngd"):
    from llqr.optim import init_blocks, make_llqr_fit

    cfg = build_config({"precond_steps": 3, "divergence": divergence, "block_structure": "diagonal"})
    variables = host_variables(model, input_shape)
    params, stats = variables["params"], variables["batch_stats"]
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, *input_shape)).astype(np.float32)
    y = np.arange(4, dtype=np.int32) % classes
    fit = make_llqr_fit(lambda p, bs, xx: model.apply({"params": p, "batch_stats": bs}, xx, train=False), cfg)
    # identity init (all ones), filled on the host from the block shapes
    blocks = jax.tree_util.tree_map(lambda b: np.ones(b.shape, b.dtype), jax.eval_shape(
        lambda p: init_blocks("diagonal", p), params))
    args = (blocks, params, stats, x, y, np.float32(1e-3), np.float32(0.0))
    compiled = fit.lower(*args).compile(compiler_options={"xla_backend_optimization_level": 0})
    new, first, last = jax.device_get(compiled(*args))
    assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(blocks)
    assert all(np.all(np.isfinite(b)) and np.all(b >= 1e-8) for b in jax.tree_util.tree_leaves(new))
    assert np.isfinite(float(first)) and float(last) <= float(first) + 1e-6 * abs(float(first))
    assert any(np.any(b != 1) for b in jax.tree_util.tree_leaves(new))  # the fit moved P


@pytest.mark.slow
def test_llqr_diagonal_fit_small_wide_resnet():
    """The cheapest family to compile here; every family and both divergences run in the slow set."""
    make, input_shape = SMALL["wide_resnet28x10"]
    check_llqr_fit(make(5), input_shape, 5)


@pytest.mark.slow
@pytest.mark.parametrize("divergence", ["ngd", "newton"])
@pytest.mark.parametrize("name", sorted(SMALL))
def test_llqr_diagonal_fit_small_every_family(name, divergence):
    make, input_shape = SMALL[name]
    check_llqr_fit(make(5), input_shape, 5, divergence)
