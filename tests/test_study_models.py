"""The SVAG-study models: PreResNet (BN/GN, widths, scale-invariant), CIFAR VGG-16/19 (BN/GN/none)
and the scale-invariant MLP. Exact parameter counts and layouts (from ``jax.eval_shape``), forward
and backward in both BatchNorm modes, scale invariance and the fixed last layer. Also the
HyperbolicLR study's SimpleCNN and SimpleViT (hand-computed counts, fixed position embedding, one step).

As in test_models.py, variables for the forward checks are drawn on the host from the traced
shapes (compiling the Flax initialisers' threefry draws dominates otherwise); forward checks use
small instances (PreResNet with one block per stage, VGG with widths / 16).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fixtures.models import host_variables, shapes
from llqr.models.mlp import MLP
from llqr.models.preresnet import PreResNet, controlled_tags, fixed_head, fixed_linear, group_count
from llqr.models.study_cnn import SimpleCNN
from llqr.models.study_mlp import ScaleInvariantMLP
from llqr.models.study_vgg import StudyVGG
from llqr.models.study_vit import SimpleViT, posemb_sincos_2d
from llqr.optim.losses import smoothed_cross_entropy
from llqr.optim.structures import num_params

CIFAR = (32, 32, 3)


def lowered(fn, *args):
    """``fn`` jitted for ``args`` at XLA's lowest backend optimisation level (faster CPU compiles)."""
    return jax.jit(fn).lower(*args).compile(compiler_options={"xla_backend_optimization_level": 0})


def apply_fn(model, train):
    def run(variables, x):
        out, mutated = model.apply(variables, x, train=train, mutable=["batch_stats"])
        return out, mutated.get("batch_stats", {})

    return run


def logsumexp(a):
    a = np.asarray(a, np.float64)
    m = a.max(axis=-1, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis=-1, keepdims=True)))[..., 0]


# --- parameter counts and layout ------------------------------------------------------------------------

COUNTS = [
    ("prn32-bn", PreResNet(), 466_714),
    ("prn32-gn", PreResNet(norm="gn"), 466_714),
    ("prn32-pad", PreResNet(shortcut="pad"), 464_154),
    ("prn32-k100", PreResNet(num_classes=100), 472_564),
    ("prn32-4x", PreResNet(width=4), 7_427_146),
    ("prn32-si", PreResNet(scale_invariant=True), 463_792),
    ("prn32-4x-si-gn", PreResNet(width=4, norm="gn", scale_invariant=True), 7_415_488),
    ("vgg16-bn", StudyVGG(), 14_728_266),
    ("vgg16-gn", StudyVGG(norm="gn"), 14_728_266),
    ("vgg16-none", StudyVGG(norm="none"), 14_719_818),
    ("vgg16-k100", StudyVGG(num_classes=100), 14_774_436),
    ("vgg19-bn", StudyVGG(depth=19), 20_040_522),
    ("vgg19-none", StudyVGG(depth=19, norm="none"), 20_029_514),
]


@pytest.mark.parametrize("model,expected", [c[1:] for c in COUNTS], ids=[c[0] for c in COUNTS])
def test_parameter_counts(model, expected):
    assert num_params(shapes(model, CIFAR)["params"]) == expected


def test_preresnet32_is_about_046m_and_mlp_counts():
    # the conv-shortcut count of a standard PreResNet-32 rounds to 0.47M, option A's to 0.46M
    assert 0.46e6 < 466_714 < 0.47e6 + 1e4
    si = shapes(ScaleInvariantMLP(hidden=(100, 300)), (28, 28, 1))
    assert num_params(si["params"]) == 784 * 100 + 100 * 300  # hidden kernels only: no bias, no LN params
    assert set(si) == {"params"} and set(si["params"]) == {"Dense_0", "Dense_1"}
    assert group_count(16) == 16 and group_count(64) == 16 and group_count(8) == 8 and group_count(24) == 8


# (model, top-level groups, batch_stats groups, modules allowed in a group)
LAYOUTS = [
    ("prn32-bn", PreResNet(), 31 + 31 + 2 + 1, 31, {"Conv_0", "BatchNorm_0", "Dense_0"}),
    ("prn32-gn", PreResNet(norm="gn"), 31 + 31 + 2 + 1, 0, {"Conv_0", "GroupNorm_0", "Dense_0"}),
    ("prn32-si-bn", PreResNet(scale_invariant=True), 33, 49, {"Conv_0"}),
    ("prn32-si-gn", PreResNet(norm="gn", scale_invariant=True), 33, 0, {"Conv_0"}),
    ("vgg19-gn", StudyVGG(depth=19, norm="gn"), 16 + 16 + 1, 0, {"Conv_0", "GroupNorm_0", "Dense_0"}),
    ("vgg16-bn", StudyVGG(), 13 + 13 + 1, 13, {"Conv_0", "BatchNorm_0", "Dense_0"}),
]


@pytest.mark.parametrize("model,groups,stats,modules", [c[1:] for c in LAYOUTS], ids=[c[0] for c in LAYOUTS])
def test_layout(model, groups, stats, modules):
    """Every parametrised stage is one top-level ``layers_i`` group holding one module; the
    scale-invariant variants train conv kernels only (norms without affine, fixed head)."""
    variables = shapes(model, CIFAR)
    params = variables["params"]
    assert len(params) == groups and len(variables.get("batch_stats", {})) == stats
    assert set(controlled_tags(model)) == set(params)
    for key, group in params.items():
        assert key.startswith("layers_")
        (module,) = group
        assert module in modules, (key, module)
        if module != "Conv_0" and module != "Dense_0":
            assert set(group[module]) == {"scale", "bias"}
    for _key, group in variables.get("batch_stats", {}).items():
        assert set(group["BatchNorm_0"]) == {"mean", "var"}
    tags = list(controlled_tags(model).values())
    assert len(set(tags)) == len(tags)


def test_momentum_and_eps():
    for model in (PreResNet(), StudyVGG()):
        norms = [s for s in model.stages() if type(s).__name__ == "Norm"]
        assert norms and {(s.momentum, s.epsilon) for s in norms} == {(0.9, 1e-5)}


def test_bad_options():
    for model in (PreResNet(norm="ln"), PreResNet(shortcut="b"), StudyVGG(depth=13), StudyVGG(norm="ln")):
        with pytest.raises(ValueError):
            model.stages()


# --- forward / backward ----------------------------------------------------------------------------------

# (id, model, input shape, also differentiate); the VGG-19 and no-norm VGG run forward only, to
# save their backward compiles (GroupNorm's backward runs in prn8-gn-si, the VGG stack's in vgg16-bn)
SMALL = [
    ("prn8-bn", PreResNet(blocks=1), (8, 8, 3), True),
    ("prn8-gn-si", PreResNet(blocks=1, norm="gn", scale_invariant=True), (8, 8, 3), True),
    ("prn8-bn-si-pad", PreResNet(blocks=1, scale_invariant=True, shortcut="pad"), (8, 8, 3), True),
    ("vgg16-bn", StudyVGG(width_divisor=16), CIFAR, True),
    ("vgg19-gn", StudyVGG(depth=19, norm="gn", width_divisor=16), CIFAR, False),
    ("vgg16-none", StudyVGG(norm="none", width_divisor=16), CIFAR, False),
    ("si-mlp", ScaleInvariantMLP(hidden=(16, 8)), (4, 4, 1), True),
]


@pytest.mark.parametrize("model,input_shape,backward", [
    pytest.param(*c[1:], marks=pytest.mark.slow) if c[0] == "vgg16-bn" else c[1:] for c in SMALL],
    ids=[c[0] for c in SMALL])
def test_forward_backward(model, input_shape, backward):
    """train=True (batch statistics, ``batch_stats`` updated) and train=False: (N, K) normalised
    log-probabilities; a finite, non-zero gradient for every parameter group."""
    variables = host_variables(model, input_shape)
    has_stats = "batch_stats" in variables
    if has_stats:  # running stats away from any batch's, so the train step visibly moves them
        variables["batch_stats"] = jax.tree_util.tree_map_with_path(
            lambda path, a: np.full_like(a, 0.5 if str(getattr(path[-1], "key", "")) == "mean" else 2.0),
            variables["batch_stats"])
    x = np.random.default_rng(1).normal(size=(3, *input_shape)).astype(np.float32)
    y = np.arange(3, dtype=np.int32)

    def with_stats(params, stats):
        return {"params": params, "batch_stats": stats} if has_stats else {"params": params}

    def step(params, stats, x, y):
        def loss(p):
            out, new_stats = apply_fn(model, True)(with_stats(p, stats), x)
            return smoothed_cross_entropy(out, y), (out, new_stats)

        if backward:
            (value, (out, new_stats)), grads = jax.value_and_grad(loss, has_aux=True)(params)
        else:
            (value, (out, new_stats)), grads = loss(params), {}
        evaluated, _ = apply_fn(model, False)(with_stats(params, stats), x)
        return value, out, new_stats, grads, evaluated

    stats = variables.get("batch_stats", {})
    value, out, new_stats, grads, evaluated = jax.device_get(
        lowered(step, variables["params"], stats, x, y)(variables["params"], stats, x, y))
    for log_probs in (out, evaluated):
        assert log_probs.shape == (3, 10) and log_probs.dtype == np.float32
        assert np.all(np.isfinite(log_probs))
        np.testing.assert_allclose(logsumexp(log_probs), 0.0, atol=1e-5)
    assert np.isfinite(value)
    for key, group in grads.items():
        g = np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(group)])
        assert np.all(np.isfinite(g)) and np.any(g != 0), key
    if has_stats:
        assert not np.allclose(out, evaluated)  # batch statistics vs running averages
        for key in stats:
            assert not np.allclose(new_stats[key]["BatchNorm_0"]["mean"], 0.5), key


# --- scale invariance and the fixed head ------------------------------------------------------------------


def scaled(params, key, factor=3.0):
    """``params`` with the kernel under top-level group ``key`` multiplied by ``factor``."""
    def scale(path, leaf):
        names = [str(getattr(p, "key", p)) for p in path]
        return leaf * factor if names[0] == key and names[-1] == "kernel" else leaf

    return jax.tree_util.tree_map_with_path(scale, params)


def conv_groups(model):
    """{tag: layers_i} of the conv stages."""
    return {s.tag: f"layers_{i}" for i, s in enumerate(model.stages()) if type(s).__name__ == "Conv"}


def outputs_under_scaling(model, input_shape, keys, train):
    """Outputs with the original variables and with each group in ``keys`` scaled by 3 (one at a time)."""
    variables = host_variables(model, input_shape)
    x = np.random.default_rng(2).normal(size=(4, *input_shape)).astype(np.float32)
    run = apply_fn(model, train)

    def all_outputs(variables, x):
        base = run(variables, x)[0]
        return base, [run({**variables, "params": scaled(variables["params"], k)}, x)[0] for k in keys]

    return jax.device_get(lowered(all_outputs, variables, x)(variables, x))


SI_CONVS = ("stem_conv", "stage_0_block_0_conv1", "stage_1_block_0_conv2", "stage_2_block_0_skip_conv")


def test_scale_invariant_preresnet_gn_eval_and_bn_train():
    """Scaling any one conv kernel by 3 leaves the output unchanged: GroupNorm in eval mode,
    BatchNorm in train mode (batch statistics)."""
    for model, train in ((PreResNet(blocks=1, norm="gn", scale_invariant=True), False),
                         (PreResNet(blocks=1, norm="bn", scale_invariant=True), True)):
        groups = conv_groups(model)
        base, outs = outputs_under_scaling(model, (8, 8, 3), [groups[t] for t in SI_CONVS], train)
        for tag, out in zip(SI_CONVS, outs):
            np.testing.assert_allclose(out, base, atol=2e-5, err_msg=tag)


def test_plain_preresnet_is_not_scale_invariant():
    model = PreResNet(blocks=1, norm="gn")
    groups = conv_groups(model)
    base, outs = outputs_under_scaling(model, (8, 8, 3), [groups["stem_conv"], groups["stage_1_block_0_conv2"]],
                                       False)
    for out in outs:
        assert np.max(np.abs(out - base)) > 1e-2


def test_scale_invariant_mlp():
    model = ScaleInvariantMLP(hidden=(16, 8))
    base, outs = outputs_under_scaling(model, (4, 4, 1), ["Dense_0", "Dense_1"], False)
    for out in outs:  # exact but for LayerNorm's eps (1e-5 against unit-scale pre-activations)
        np.testing.assert_allclose(out, base, atol=1e-4)
    plain = MLP(hidden=(16, 8))
    base, outs = outputs_under_scaling(plain, (4, 4, 1), ["Dense_0", "Dense_1"], False)
    for out in outs:
        assert np.max(np.abs(out - base)) > 1e-2


def test_fixed_head_is_a_constant_with_zero_gradient():
    """The fixed last layer is not a parameter; the model's logits are the pooled features times
    ``fixed_head`` (captured through the stage outputs), and no gradient reaches that matrix."""
    model = PreResNet(blocks=1, norm="gn", scale_invariant=True, head_seed=3)
    variables = host_variables(model, (8, 8, 3))
    x = np.random.default_rng(4).normal(size=(2, 8, 8, 3)).astype(np.float32)
    stages = model.stages()
    pool = next(i for i, s in enumerate(stages) if type(s).__name__ == "GlobalAvgPool")
    head = pool + 1
    assert type(stages[head]).__name__ == "FixedDense" and f"layers_{head}" not in variables["params"]

    def run(variables, x):
        return model.apply(variables, x, train=False, capture_intermediates=True)

    out, state = jax.device_get(lowered(run, variables, x)(variables, x))
    features = state["intermediates"][f"layers_{pool}"]["__call__"][0]
    kernel = fixed_head(features.shape[-1], 10, 3)
    assert np.array_equal(kernel, fixed_head(64, 10, 3)) and not np.array_equal(kernel, fixed_head(64, 10, 0))
    np.testing.assert_allclose(out, jax.nn.log_softmax(features @ kernel), atol=1e-5)

    y = np.array([1, 2], np.int32)
    grad_kernel, grad_features = jax.grad(
        lambda k, f: smoothed_cross_entropy(jax.nn.log_softmax(fixed_linear(f, k)), y), argnums=(0, 1))(
            jnp.asarray(kernel), jnp.asarray(features))
    assert not np.any(np.asarray(grad_kernel)) and np.any(np.asarray(grad_features))


def test_scale_invariant_mlp_needs_a_hidden_layer():
    with pytest.raises(ValueError, match="hidden"):
        shapes(ScaleInvariantMLP(hidden=()), (5,))


@pytest.mark.parametrize("overrides,count", [
    ({"model": "preresnet32", "norm": "bn"}, 466_714),
    ({"model": "preresnet32", "norm": "gn", "width": 4}, 7_427_146),
    ({"model": "vgg16", "norm": "none"}, 14_719_818),
    ({"model": "vgg19", "norm": "gn"}, 20_040_522),
])
def test_config_builds_the_study_models(overrides, count):
    from llqr.config import build_config
    from llqr.models import build_model

    model = build_model(build_config(overrides), num_classes=10)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False))
    assert sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes["params"])) == count


def test_preresnet_refuses_norm_none():
    from llqr.config import ConfigError, build_config
    from llqr.models import build_model

    with pytest.raises(ConfigError, match="preresnet32 needs norm=bn or norm=gn"):
        build_model(build_config({"model": "preresnet32", "norm": "none"}), num_classes=10)


# --- the HyperbolicLR study's CIFAR-10 models: SimpleCNN and SimpleViT ------------------------------------

TINY_VIT = dict(depth=1, dim=32, heads=2, mlp_dim=64)


def simple_cnn_count(k=10):
    """By hand: two conv3x3 pairs (32, 64; with bias), 8 x 8 x 64 flattened -> Dense 256 -> Dense k."""
    convs = [(3, 32), (32, 32), (32, 64), (64, 64)]
    conv = sum(9 * c_in * c_out + c_out for c_in, c_out in convs)
    return conv + (8 * 8 * 64) * 256 + 256 + 256 * k + k


def simple_vit_count(patch=4, dim=192, depth=6, mlp_dim=384, k=10, channels=3):
    """By hand: patch Dense + depth x (2 LNs, q/k/v/out with bias, MLP) + final LN + head."""
    p = patch * patch * channels
    block = 2 * (2 * dim) + 4 * (dim * dim + dim) + (dim * mlp_dim + mlp_dim) + (mlp_dim * dim + dim)
    return (p * dim + dim) + depth * block + 2 * dim + (dim * k + k)


STUDY_COUNTS = [
    ("cnn", SimpleCNN(), simple_cnn_count()),
    ("cnn-k100", SimpleCNN(num_classes=100), simple_cnn_count(k=100)),
    ("vit", SimpleViT(), simple_vit_count()),
    ("vit-k100", SimpleViT(num_classes=100), simple_vit_count(k=100)),
    ("vit-p8", SimpleViT(patch=8), simple_vit_count(patch=8)),
    ("vit-tiny", SimpleViT(**TINY_VIT), simple_vit_count(dim=32, depth=1, mlp_dim=64)),
]


@pytest.mark.parametrize("model,expected", [c[1:] for c in STUDY_COUNTS], ids=[c[0] for c in STUDY_COUNTS])
def test_hyperbolic_study_parameter_counts(model, expected):
    variables = shapes(model, CIFAR)
    assert set(variables) == {"params"}  # no batch_stats, no constants stored as variables
    assert num_params(variables["params"]) == expected


def test_hyperbolic_study_default_counts_and_output_shapes():
    assert simple_cnn_count() == 1_116_970 and simple_vit_count() == 1_793_866
    for model in (SimpleCNN(), SimpleViT()):  # traced only: nothing heavy is computed
        out = jax.eval_shape(partial(model.apply, train=False), shapes(model, CIFAR, batch=2),
                             jax.ShapeDtypeStruct((2, *CIFAR), jnp.float32))
        assert out.shape == (2, 10) and out.dtype == jnp.float32


def test_simple_vit_layout_and_fixed_position_embedding():
    """The position embedding is a constant (no parameter of its shape, no extra collection): the
    params are the patch embedding, the blocks, the final LayerNorm and the head only."""
    params = shapes(SimpleViT(), CIFAR)["params"]
    assert set(params) == {"patch_embed", "ln_final", "head"} | {f"block_{i}" for i in range(6)}
    assert set(params["block_0"]) == {"ln_attn", "attn", "ln_mlp", "mlp_in", "mlp_out"}
    assert all(a.shape not in ((64, 192), (1, 64, 192)) for a in jax.tree_util.tree_leaves(params))
    assert not any("pos" in str(p).lower() for p, _ in jax.tree_util.tree_flatten_with_path(params)[0])
    pe = posemb_sincos_2d(8, 8, 192)
    assert pe.shape == (64, 192) and pe.dtype == np.float32 and np.all(np.abs(pe) <= 1.0)
    np.testing.assert_array_equal(pe[0], np.repeat([0.0, 1.0, 0.0, 1.0], 48))  # token (0, 0)
    assert len({row.tobytes() for row in pe}) == 64  # every grid position has its own code
    with pytest.raises(ValueError):
        posemb_sincos_2d(8, 8, 30)


def one_step(model, params, x, y):
    """Loss and gradient at ``params``, the loss after one SGD step, and the eval-mode output."""
    def loss(p):
        return smoothed_cross_entropy(model.apply({"params": p}, x, train=True), y)

    value, grads = jax.value_and_grad(loss)(params)
    new = jax.tree_util.tree_map(lambda p, g: p - 0.01 * g, params, grads)
    return value, grads, loss(new), model.apply({"params": params}, x, train=False)


def check_step(out, value, grads, after):
    """(2, 10) float32 normalised log-probabilities; finite loss before and after the step; every
    gradient leaf finite and non-zero."""
    assert out.shape == (2, 10) and out.dtype == np.float32 and np.all(np.isfinite(out))
    np.testing.assert_allclose(logsumexp(out), 0.0, atol=1e-5)
    assert np.isfinite(value) and np.isfinite(after)
    for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
        assert np.all(np.isfinite(g)) and np.any(g != 0), jax.tree_util.keystr(path)


def test_simple_cnn_forward_and_one_step():
    model = SimpleCNN()
    params = host_variables(model, CIFAR)["params"]
    x = np.random.default_rng(6).normal(size=(2, *CIFAR)).astype(np.float32)
    y = np.array([3, 7], np.int32)
    value, grads, after, out = jax.device_get(lowered(partial(one_step, model), params, x, y)(params, x, y))
    check_step(out, value, grads, after)


def test_simple_vit_init_positions_and_one_step():
    """One compile (a tiny ViT) for: the real ``init`` (a params-only dict, zero head, so the
    initial output is uniform); then, with a random head, one SGD step as for the CNN, and the
    position embedding at work: without it the mean-pooled ViT would be invariant to permuting
    patches, and the batch's second image is the first with two 4x4 patches swapped."""
    model = SimpleViT(**TINY_VIT)
    x = np.random.default_rng(5).normal(size=(1, *CIFAR)).astype(np.float32)
    swapped = x.copy()
    swapped[:, 0:4, 0:4], swapped[:, 28:32, 12:16] = x[:, 28:32, 12:16], x[:, 0:4, 0:4]
    both = np.concatenate([x, swapped])
    y = np.array([3, 7], np.int32)

    def run(key, x, y):
        variables = model.init(key, x[:1], train=False)
        head = dict(variables["params"]["head"], kernel=jax.random.normal(key, (TINY_VIT["dim"], 10)))
        params = dict(variables["params"], head=head)
        return variables, model.apply(variables, x, train=False), one_step(model, params, x, y)

    key = jax.random.PRNGKey(0)
    variables, initial, (value, grads, after, out) = jax.device_get(lowered(run, key, both, y)(key, both, y))
    assert set(variables) == {"params"} and variables.get("batch_stats", {}) == {}
    assert not np.any(variables["params"]["head"]["kernel"]) and np.any(variables["params"]["patch_embed"]["kernel"])
    np.testing.assert_allclose(initial, np.full((2, 10), -np.log(10.0)), atol=1e-6)
    check_step(out, value, grads, after)
    assert np.max(np.abs(out[0] - out[1])) > 1e-4


def test_hyperbolic_study_config():
    """The config names build the models (``init`` traced: a params-only dict)."""
    from llqr.config import build_config
    from llqr.config.families import MODELS
    from llqr.models import build_model

    assert {"simple_cnn", "simple_vit"} <= set(MODELS)
    for name, cls, count in (("simple_cnn", SimpleCNN, 1_116_970), ("simple_vit", SimpleViT, 1_793_866)):
        model = build_model(build_config({"model": name, "dataset": "cifar10"}), num_classes=10)
        assert isinstance(model, cls) and num_params(shapes(model, CIFAR)["params"]) == count
