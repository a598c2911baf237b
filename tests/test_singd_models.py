"""The SINGD study's ConvMixer and CCT: parameter counts against the references' layer lists,
tiny forward/backward passes, and the Kronecker capture of their layer types (fused q/k/v
projection, strided patch-embedding conv, depthwise conv)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llqr.models.attention import FusedSelfAttention
from llqr.models.cct import CCT
from llqr.models.convmixer import ConvMixer
from llqr.optim.capture import capture, conv_patches, group_mean
from llqr.optim.structures import num_params
from reference_counts import conv as _conv, linear as _linear, xent as _xent

# --- parameter counts: the references' torch layer lists, counted by hand ----------------------------


def convmixer_reference_count(classes, dim=256, depth=12, kernel=5, patch=2):
    """The INGD/SINGD authors' ``ConvMixer(dim, depth, kernel_size, patch_size)``: Conv2d(3, dim,
    patch, stride patch), BatchNorm2d; per block Conv2d(dim, dim, k, groups=dim), BN, Conv2d 1x1,
    BN; Linear(dim, classes)."""
    bn = 2 * dim
    block = _conv(dim, dim, kernel, groups=dim) + bn + _conv(dim, dim, 1) + bn
    return _conv(3, dim, patch) + bn + depth * block + _linear(dim, classes)


def cct_reference_count(classes, image=32, dim=256, layers=7, mlp_ratio=2):
    """SHI-Labs' ``cct_7_3x1_32_c100``: Tokenizer Conv2d(3, dim, 3, bias=False) + maxpool/2,
    learnable positional_emb (1, tokens, dim), per TransformerEncoderLayer pre_norm, Attention
    (qkv Linear(dim, 3 dim, bias=False), proj Linear), norm1, linear1, linear2; norm,
    attention_pool Linear(dim, 1), fc Linear(dim, classes)."""
    tokens = (image // 2) ** 2
    ln = 2 * dim
    layer = ln + _linear(dim, 3 * dim, bias=False) + _linear(dim, dim) + ln + _linear(dim, mlp_ratio * dim) \
        + _linear(mlp_ratio * dim, dim)
    return _conv(3, dim, 3, bias=False) + tokens * dim + layers * layer + ln + _linear(dim, 1) + _linear(dim, classes)


@pytest.mark.parametrize("model,reference", [(ConvMixer, convmixer_reference_count), (CCT, cct_reference_count)],
                         ids=["convmixer", "cct"])
@pytest.mark.parametrize("classes", [100, 10])
def test_parameter_count_is_the_reference_configuration(model, reference, classes):
    variables = jax.eval_shape(lambda: model(num_classes=classes).init(jax.random.PRNGKey(0),
                                                                       jnp.zeros((1, 32, 32, 3)), train=False))
    assert num_params(variables["params"]) == reference(classes)


def test_cct_positions_follow_the_image_size():
    variables = jax.eval_shape(lambda: CCT(num_classes=10).init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3))))
    assert num_params(variables["params"]) == cct_reference_count(10, image=64)


# --- tiny forward/backward and capture through the models -----------------------------------------


TINY = {"convmixer": (ConvMixer(num_classes=3, dim=4, depth=2, kernel=3, patch=2),
                      {"patch_embed", "block0_depthwise", "block0_pointwise", "block1_depthwise", "block1_pointwise",
                       "head"}),
        "cct": (CCT(num_classes=3, dim=8, layers=1, heads=2),
                {"tokenizer", "layer0_attn/qkv", "layer0_attn/proj", "layer0_fc1", "layer0_fc2", "attention_pool",
                 "head"})}


def _leaf(tree, names):
    for n in names:
        tree = tree[n]
    return tree


# cct in -m slow (23 s of compiles): its fused q/k/v and patch-embedding captures are checked below
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "cct" else n for n in sorted(TINY)])
def test_tiny_model_trains_and_its_layers_are_captured(name):
    model, layers = TINY[name]
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 3)), jnp.float32)
    y = jnp.asarray([0, 2])
    variables = model.init(jax.random.PRNGKey(0), x, train=False)

    def apply(v, inputs):
        out = model.apply(v, inputs, train=True, mutable=["batch_stats"])
        return out[0]

    @jax.jit
    def run(v):
        _, cap = capture(apply, v, x, y, _xent)
        rest = {k: val for k, val in v.items() if k != "params"}
        loss, grads = jax.value_and_grad(lambda p: _xent(apply({"params": p, **rest}, x), y))(v["params"])
        return apply(v, x), loss, grads, cap

    out, loss, grads, cap = run(variables)
    assert out.shape == (2, 3) and np.isfinite(float(loss))
    np.testing.assert_allclose(np.exp(np.asarray(out)).sum(1), 1.0, rtol=1e-5)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))
    assert {"/".join(k[:-1]) for k in cap} == layers
    for path, (a, g) in cap.items():
        if "depthwise" in path[0]:
            continue  # grouped: an approximation by design (test below)
        layer = _leaf(grads, path[:-1])
        gw = np.asarray(a.T @ g)
        kernel = np.asarray(layer["kernel"]).reshape(-1, layer["kernel"].shape[-1])
        np.testing.assert_allclose(gw[:kernel.shape[0]], kernel, rtol=1e-4, atol=1e-6)
        if "bias" in layer:
            np.testing.assert_allclose(gw[-1], layer["bias"], rtol=1e-4, atol=1e-6)


# --- the capture of each new layer type, on a bare layer -------------------------------------------


class _Wrap(nn.Module):
    """One layer under test, then a mean over positions and a Dense head to 3 log-probabilities."""

    layer: nn.Module

    @nn.compact
    def __call__(self, x):
        h = self.layer(x)
        h = h.reshape(h.shape[0], -1, h.shape[-1]).mean(1)
        return nn.log_softmax(nn.Dense(3, name="head")(h))


CASES = {
    "fused_qkv": (FusedSelfAttention(heads=2, qkv_bias=True), (3, 5, 4), ("layer", "qkv")),
    "patch_embed": (nn.Conv(6, (2, 2), strides=(2, 2), padding="VALID"), (3, 6, 6, 3), ("layer",)),
    # depthwise with every input channel equal: the group mean is each group's own input, so aᵀg is
    # the exact kernel gradient; with distinct channels a is the group mean's patches (below)
    "depthwise": (nn.Conv(4, (3, 3), padding="SAME", feature_group_count=4), (3, 5, 5, 1), ("layer",)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_capture_reproduces_the_kernel_gradient(case):
    layer, shape, path = CASES[case]
    x = jnp.asarray(np.random.default_rng(1).normal(size=shape), jnp.float32)
    if case == "depthwise":
        x = jnp.broadcast_to(x, shape[:-1] + (4,))
    y = jnp.asarray([0, 1, 2])
    model = _Wrap(layer)

    @jax.jit
    def run(key):
        variables = model.init(key, x)
        _, cap = capture(model.apply, variables, x, y, _xent)
        return cap, jax.grad(lambda p: _xent(model.apply({"params": p}, x), y))(variables["params"])

    cap, grads = run(jax.random.PRNGKey(0))
    a, g = cap[path + ("kernel",)]
    layer_grads = _leaf(grads, path)
    kernel = layer_grads["kernel"]
    gw = np.asarray(a.T @ g)
    np.testing.assert_allclose(gw[:-1], np.asarray(kernel).reshape(-1, kernel.shape[-1]), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(gw[-1], layer_grads["bias"], rtol=1e-4, atol=1e-6)
    if case == "depthwise":  # distinct channels: the patches of the channel-averaged input, k² columns
        conv = CASES[case][0]
        z = jnp.asarray(np.random.default_rng(2).normal(size=(2, 5, 5, 4)), jnp.float32)
        plain = nn.Conv(4, (3, 3), padding="SAME")
        want = conv_patches(plain, group_mean(z, 4))
        assert want.shape == (2 * 25, 9)
        np.testing.assert_allclose(conv_patches(conv, z), want, rtol=1e-6)
        np.testing.assert_allclose(group_mean(z, 4)[..., 0], z.mean(-1), rtol=1e-6)

