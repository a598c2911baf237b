"""The SVAG study's own model forms (llqr/models/svag_preresnet.py, svag_vgg.py, resnet32.py):
parameter counts derived from the study's PyTorch layer lists, output shapes, and the scale
invariance (or homogeneity) each one claims."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llqr.models.resnet32 import ResNet32
from llqr.models.svag_preresnet import SvagPreResNet
from llqr.models.svag_vgg import SvagVGG

# --- the study's parameter counts, following its constructors layer by layer ------------------------
# PyTorch counts every nn.Parameter: trainable ones, and the last layer that fix_last_layer=True
# freezes (requires_grad=False; its bias exists since the configs keep is_bias=True). Affine-free
# norms (bn_affine=False) own no parameters (running statistics are buffers).


def conv(c_in: int, c_out: int, k: int) -> int:
    return c_in * c_out * k * k  # every conv here is bias=False


def norm(c: int, affine: bool) -> int:
    return 2 * c if affine else 0


def study_preresnet(widen_factor: int, num_classes: int, depth: int = 32) -> tuple[int, int]:
    """(trainable, frozen) of my_models.preresnet.PreResNet(depth, widths=[16, 32, 64], homo=True,
    bn_affine=False, fix_last_layer=True, is_bias=True, block_name='BasicBlock')."""
    n = (depth - 2) // 6
    inplanes = 16 * widen_factor
    total = conv(3, inplanes, 3)  # self.conv1
    for width in (16, 32, 64):
        planes = width * widen_factor
        total += norm(inplanes, False) + conv(inplanes, planes, 1)  # homo: downsample = [norm2d, 1x1 conv]
        total += norm(inplanes, False) + conv(inplanes, planes, 3) + norm(planes, False) + conv(planes, planes, 3)
        total += (n - 1) * (2 * norm(planes, False) + 2 * conv(planes, planes, 3))
        inplanes = planes
    total += norm(inplanes, False)  # self.bn
    return total, inplanes * num_classes + num_classes  # self.fc, frozen


STUDY_VGG_CFG = {
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def study_vgg(depth: int, num_classes: int) -> tuple[int, int]:
    """(trainable, frozen) of my_models.vggv2.vgg{depth}_bn(bn_affine=False, fix_last_layer=True,
    is_bias=True) for any norm_method: the _bn branch's convs are bias-free, 'None' is Identity."""
    total, c_in = 0, 3
    for v in STUDY_VGG_CFG[depth]:
        if v != "M":
            total += conv(c_in, v, 3) + norm(v, False)
            c_in = v
    return total, c_in * num_classes + num_classes


def study_resnet(num_classes: int, depth: int = 32) -> tuple[int, int]:
    """(trainable, frozen) of my_models.resnet.ResNet(depth): affine BatchNorm, option-B
    projections (1x1 conv + BN where the shape changes), a trainable nn.Linear with bias."""
    n = (depth - 2) // 6
    total, inplanes = conv(3, 16, 3) + norm(16, True), 16
    for planes, stride in ((16, 1), (32, 2), (64, 2)):
        for j in range(n):
            total += conv(inplanes, planes, 3) + norm(planes, True) + conv(planes, planes, 3) + norm(planes, True)
            if j == 0 and (stride != 1 or inplanes != planes):
                total += conv(inplanes, planes, 1) + norm(planes, True)
            inplanes = planes
    return total + inplanes * num_classes + num_classes, 0


def variables_of(model, shape=(2, 32, 32, 3)):
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape), train=False))


def size(tree) -> int:
    return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("model,study", [
    (SvagPreResNet(norm="bn"), study_preresnet(1, 10)),
    (SvagPreResNet(norm="bn", width=4), study_preresnet(4, 10)),  # preresnet32_4x (CIFAR-10)
    (SvagPreResNet(norm="gn", width=4), study_preresnet(4, 10)),  # preresnet32_4x_simple_gn
    (SvagPreResNet(norm="bn", width=4, num_classes=100), study_preresnet(4, 100)),  # the CIFAR-100 SVAG runs
    (SvagVGG(depth=16, norm="bn"), study_vgg(16, 10)),
    (SvagVGG(depth=16, norm="gn", num_classes=100), study_vgg(16, 100)),  # vgg16_gn_b128_sde1 (CIFAR-100)
    (SvagVGG(depth=16, norm="none"), study_vgg(16, 10)),
    (SvagVGG(depth=19, norm="bn"), study_vgg(19, 10)),  # the CIFAR-10 'vgg16' configs build vgg19_bn
    (SvagVGG(depth=19, norm="gn"), study_vgg(19, 10)),
    (ResNet32(), study_resnet(10)),
    (ResNet32(num_classes=100), study_resnet(100)),
], ids=["prn32-bn", "prn32x4-bn", "prn32x4-gn", "prn32x4-bn-k100", "vgg16-bn", "vgg16-gn-k100", "vgg16-none",
        "vgg19-bn", "vgg19-gn", "resnet32", "resnet32-k100"])
def test_parameter_counts_match_the_study(model, study):
    trainable, frozen = study
    variables = variables_of(model)
    assert size(variables["params"]) == trainable
    ours_frozen = sum(a.size for a in model.frozen_arrays()) if hasattr(model, "frozen_arrays") else 0
    assert ours_frozen == frozen
    bn = getattr(model, "norm", "bn") == "bn"
    assert ("batch_stats" in variables) == bn


def test_the_counting_follows_the_layer_lists():
    """The derivations land on the published sizes: ResNet-32 0.46M, PreResNet-32 ≈ 0.46M."""
    assert study_resnet(10) == (466_906, 0)
    assert study_preresnet(1, 10) == (464_048, 650)


@pytest.mark.parametrize("name,overrides,classes", [
    ("svag_preresnet32", {"norm": "gn", "width": 4}, 100),
    ("svag_vgg16", {"norm": "none"}, 10),
    ("svag_vgg19", {"norm": "gn"}, 10),
    ("resnet32", {}, 10),
])
def test_the_config_selects_them_and_shapes_are_right(name, overrides, classes):
    from llqr.config import build_config
    from llqr.models import build_model

    model = build_model(build_config({"model": name, "dataset": "cifar10", **overrides}), num_classes=classes)
    x = jnp.zeros((3, 32, 32, 3))
    out = jax.eval_shape(lambda: model.apply(model.init(jax.random.PRNGKey(0), x, train=False), x, train=False))
    assert out.shape == (3, classes)
    for key, value in overrides.items():
        assert getattr(model, key) == value


def test_vgg_needs_cifar_sized_images():
    from llqr.config import ConfigError, build_config
    from llqr.config.runnable import check_runnable

    with pytest.raises(ConfigError, match="32x32"):
        check_runnable(build_config({"model": "svag_vgg16", "dataset": "digits"}))


# --- forward passes on reduced widths / depths (same code path) ------------------------------------

X = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))


def init(model):
    """He-scaled numpy draws in the model's variable shapes (jax's PRNG init compiles per shape,
    which dominates these tests on a CPU); BatchNorm statistics at 0 and 1."""
    rng = np.random.default_rng(0)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "var" in name:
            return np.ones(leaf.shape, np.float32)
        if leaf.ndim < 2:
            return np.zeros(leaf.shape, np.float32) if "mean" in name else rng.uniform(0.5, 1.5, leaf.shape)
        fan_in = int(np.prod(leaf.shape[:-1]))
        return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, variables_of(model, X.shape))


def run(model, variables, train):
    """log-probs of X (BatchNorm: batch statistics when ``train``); one compile per model and mode."""
    return _compiled(model, train)(variables)


@functools.cache
def _compiled(model, train):
    if train:
        return jax.jit(lambda v: model.apply(v, X, train=True, mutable=["batch_stats"])[0])
    return jax.jit(lambda v: model.apply(v, X, train=False))


def scaled(variables, factor, where=lambda path: True):
    params = jax.tree_util.tree_map_with_path(
        lambda p, a: a * factor if where(jax.tree_util.keystr(p)) else a, variables["params"])
    return {**variables, "params": params}


def group_of(model, tag: str) -> str:
    """The ``layers_i`` group of the stage tagged ``tag``."""
    (index,) = [i for i, s in enumerate(model.stages()) if s.tag == tag]
    return f"'layers_{index}'"


def scaled_group(model, variables, tag: str, factor: float):
    """``variables`` with the parameters of the stage tagged ``tag`` times ``factor``."""
    group = group_of(model, tag)
    return scaled(variables, factor, lambda path: group in path)


SMALL_PRN = {"bn": SvagPreResNet(norm="bn", blocks=2), "gn": SvagPreResNet(norm="gn", blocks=2)}


@pytest.mark.parametrize("norm,train", [("bn", True), ("gn", False)])
def test_preresnet_is_invariant_to_a_joint_scale_of_its_kernels(norm, train):
    """The study's sc_test (every trainable parameter times c), and the kernels only norms read."""
    model = SMALL_PRN[norm]
    variables = init(model)
    out = run(model, variables, train)
    assert out.shape == (4, 10) and np.allclose(np.asarray(jax.nn.logsumexp(out, axis=-1)), 0.0, atol=1e-5)
    np.testing.assert_allclose(run(model, scaled(variables, 3.7), train), out, atol=2e-4)
    for tag in ("stem_conv", "stage_1_block_1_conv1"):
        np.testing.assert_allclose(run(model, scaled_group(model, variables, tag, 5.0), train), out, atol=2e-4)
    # a block's last conv feeds the residual sum, not a norm: alone, it is not invariant
    assert not np.allclose(run(model, scaled_group(model, variables, "stage_1_block_1_conv2", 5.0), train), out,
                           atol=1e-2)


def test_the_head_is_the_frozen_constant_not_a_parameter():
    model, other = SvagPreResNet(norm="gn", blocks=1), SvagPreResNet(norm="gn", blocks=1, head_seed=1)
    variables = init(model)
    assert not np.allclose(run(model, variables, False), run(other, variables, False))
    kernel, bias = model.frozen_arrays()
    assert kernel.shape == (64, 10) and not bias.any()
    np.testing.assert_allclose(kernel.std(), np.sqrt(2 / 64), rtol=0.2)  # the study's N(0, 2/fan_in)


@pytest.mark.parametrize("norm,train", [("bn", True), ("gn", False)])
def test_normalised_vgg_is_invariant_to_each_kernel_scale(norm, train):
    model = SvagVGG(depth=16, norm=norm, width_divisor=8)
    variables = init(model)
    out = run(model, variables, train)
    assert out.shape == (4, 10)
    for tag in ("block_0_conv_0", "block_2_conv_1", "block_4_conv_2"):
        np.testing.assert_allclose(run(model, scaled_group(model, variables, tag, 4.0), train), out, atol=2e-4)


def test_unnormalised_vgg_is_homogeneous_instead():
    """No norm, no biases: one kernel times c scales the logits (so log-prob differences) by c."""
    model = SvagVGG(depth=16, norm="none", width_divisor=8)
    variables = init(model)
    out, out2 = run(model, variables, False), run(model, scaled_group(model, variables, "block_3_conv_0", 2.0), False)
    diff, diff2 = np.asarray(out - out[:, :1]), np.asarray(out2 - out2[:, :1])
    np.testing.assert_allclose(diff2, 2.0 * diff, rtol=1e-3, atol=1e-6)
    assert np.abs(diff).max() > 0


def test_resnet32_is_not_scale_invariant():
    model = ResNet32(blocks=1)
    variables = init(model)
    out = run(model, variables, True)
    assert out.shape == (4, 10)
    assert not np.allclose(run(model, scaled(variables, 3.0), True), out, atol=1e-2)


def test_the_initialisers_are_the_studys():
    from llqr.models.svag_layers import he_normal, torch_linear_bias

    key = jax.random.PRNGKey(0)
    shape = (3, 3, 64, 128)  # HWIO: fan_in 3·3·64, fan_out 3·3·128
    np.testing.assert_allclose(float(jnp.std(he_normal("fan_in")(key, shape))), np.sqrt(2 / 576), rtol=0.02)
    np.testing.assert_allclose(float(jnp.std(he_normal("fan_out")(key, shape))), np.sqrt(2 / 1152), rtol=0.02)
    bias = np.asarray(torch_linear_bias(64)(key, (1000,)))
    assert np.abs(bias).max() <= 1 / 8 and np.abs(bias).max() > 0.9 / 8
