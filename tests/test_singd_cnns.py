"""The SINGD study's RepViT and HDVT (DHVT): parameter counts against the references' layer lists,
tiny forward/backward passes, and the Kronecker capture of their new layer types (SE convs on
pooled features, DHVT's head-token Dense, its SE-like Dense scaling the class token only, its 1x1
convs over the patch tokens only)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llqr.models.hdvt import DAFF, DHVT, HIAttention
from llqr.models.repvit import RepViT, SqueezeExcite
from llqr.optim.capture import capture
from llqr.optim.structures import num_params
from reference_counts import conv as _conv, linear as _linear, xent as _xent
from xla_test_flags import COMPILER_OPTIONS

# --- parameter counts: the references' torch layer lists, counted by hand ----------------------------


def _divisible(v, divisor=8, round_limit=0.9):
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < round_limit * v else new


# THU-MIG/RepViT ``repvit_m0_9`` cfgs: k, t, c, use_se, use_hs, s
REPVIT_M0_9 = [[3, 2, 48, 1, 0, 1], [3, 2, 48, 0, 0, 1], [3, 2, 48, 0, 0, 1],
               [3, 2, 96, 0, 0, 2], [3, 2, 96, 1, 0, 1], [3, 2, 96, 0, 0, 1], [3, 2, 96, 0, 0, 1],
               [3, 2, 192, 0, 1, 2]] + [[3, 2, 192, 1, 1, 1], [3, 2, 192, 0, 1, 1]] * 7 + [
               [3, 2, 192, 0, 1, 1], [3, 2, 384, 0, 1, 2], [3, 2, 384, 1, 1, 1], [3, 2, 384, 0, 1, 1]]


def repvit_reference_count(classes, cfgs=REPVIT_M0_9, distillation=False):
    """THU-MIG/RepViT's ``RepViT(cfgs)``: Conv2d_BN = Conv2d(bias=False) + BatchNorm2d; RepVGGDW =
    Conv2d_BN(3x3 dw) + Conv2d(1x1 dw, bias) + BatchNorm2d; timm SqueezeExcite(c, 0.25) = two 1x1
    Conv2d with bias, R = make_divisible(c/4, 8, round_limit=0); classifier BN_Linear (a second one
    with distillation)."""
    def conv_bn(a, b, k, groups=1):
        return _conv(a, b, k, groups, bias=False) + 2 * b

    def se(c):
        r = _divisible(c * 0.25, 8, round_limit=0.0)
        return _conv(c, r, 1) + _conv(r, c, 1)

    c_in = cfgs[0][2]
    total = conv_bn(3, c_in // 2, 3) + conv_bn(c_in // 2, c_in, 3)
    for k, t, c, use_se, _, s in cfgs:
        out, hidden = _divisible(c, 8), _divisible(c_in * t, 8)
        if s == 2:
            total += conv_bn(c_in, c_in, k, groups=c_in) + (se(c_in) if use_se else 0) + conv_bn(c_in, out, 1)
            total += conv_bn(out, 2 * out, 1) + conv_bn(2 * out, out, 1)
        else:
            total += conv_bn(c_in, c_in, 3, groups=c_in) + _conv(c_in, c_in, 1, groups=c_in) + 2 * c_in
            total += (se(c_in) if use_se else 0) + conv_bn(c_in, hidden, 1) + conv_bn(hidden, out, 1)
        c_in = out
    head = 2 * c_in + _linear(c_in, classes)
    return total + head * (2 if distillation else 1)


def dhvt_reference_count(classes, patch, dim=192, depth=12, heads=4, mlp_ratio=4):
    """ArieSeirack/DHVT's ``VisionTransformer(apply_dhvt=True)``: ConvPatchEmbed (Affine(3), conv3x3
    = Conv2d(bias=False) + SyncBatchNorm per stride-2 step, Affine(D)), cls_token; per DHVT_Block
    LayerNorm, HI_Attention (ht_proj Linear(D/h, D), ht_norm LayerNorm(D/h), pos_embed (1, h, D),
    qkv Linear(D, 3D, bias), proj), LayerNorm, DAFF (conv1, conv2 dw, conv3 with bias, bn1-3,
    compress Linear(D, D/4), excitation Linear(D/4, D)); norm; head Linear(D, K)."""
    widths = {4: [dim // 2, dim], 16: [dim // 8, dim // 4, dim // 2, dim]}[patch]
    sope, c = 6 + 2 * dim, 3
    for w in widths:
        sope += _conv(c, w, 3, bias=False) + 2 * w
        c = w
    hd, hidden = dim // heads, mlp_ratio * dim
    attn = _linear(hd, dim) + 2 * hd + heads * dim + _linear(dim, 3 * dim) + _linear(dim, dim)
    daff = _conv(dim, hidden, 1) + 2 * hidden + _conv(hidden, hidden, 3, groups=hidden) + 2 * hidden \
        + _conv(hidden, dim, 1) + 2 * dim + _linear(dim, dim // 4) + _linear(dim // 4, dim)
    return sope + dim + depth * (2 * dim + attn + 2 * dim + daff) + 2 * dim + _linear(dim, classes)


def _count(model, image):
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, image, image, 3))))
    return num_params(variables["params"])


def test_repvit_counting_follows_the_reference_log():
    # logs/repvit_m0_9_distill_300e.txt: "n_parameters": 5489328 (ImageNet, two heads, training form)
    assert repvit_reference_count(1000, distillation=True) == 5_489_328


@pytest.mark.parametrize("classes,image", [(100, 32), (10, 224)])
def test_repvit_parameter_count_is_m0_9(classes, image):
    assert _count(RepViT(num_classes=classes), image) == repvit_reference_count(classes)


@pytest.mark.parametrize("classes,image,patch", [(100, 32, 4), (10, 224, 16)])
def test_dhvt_parameter_count_is_dhvt_tiny(classes, image, patch):
    assert _count(DHVT(num_classes=classes), image) == dhvt_reference_count(classes, patch)


# --- capture: aᵀg is the kernel (and bias) gradient of every ungrouped captured layer ---------------


def _leaf(tree, names):
    for n in names:
        tree = tree[n]
    return tree


def _check_capture(cap, grads, grouped=()):
    """aᵀg against the gradient of every captured layer but the ``grouped`` ones (depthwise: an
    approximation by design, tests/test_singd_models.py)."""
    for path, (a, g) in cap.items():
        if "/".join(path[:-1]) in grouped:
            continue
        layer = _leaf(grads, path[:-1])
        kernel = np.asarray(layer["kernel"])
        gw = np.asarray(a).T @ np.asarray(g)
        kernel = kernel.reshape(-1, kernel.shape[-1])
        np.testing.assert_allclose(gw[:kernel.shape[0]], kernel, rtol=1e-4, atol=1e-6, err_msg=str(path))
        if "bias" in layer:
            np.testing.assert_allclose(gw[-1], layer["bias"], rtol=1e-4, atol=1e-6, err_msg=str(path))


GROUPED = ("token_repvggdw/conv3x3/conv", "token_repvggdw/conv1x1", "token_dw/conv", "daff/conv2")
TINY = {"repvit": (RepViT(num_classes=3, blocks=((8, 1, 1), (16, 1, 2), (16, 0, 1))),
                   {"stem0/conv", "stem1/conv", "head",
                    *(f"block0/{m}" for m in ("token_repvggdw/conv3x3/conv", "token_repvggdw/conv1x1", "se/fc1",
                                               "se/fc2", "channel_expand/conv", "channel_project/conv")),
                    *(f"block1/{m}" for m in ("token_dw/conv", "se/fc1", "se/fc2", "token_pw/conv",
                                               "channel_expand/conv", "channel_project/conv")),
                    *(f"block2/{m}" for m in ("token_repvggdw/conv3x3/conv", "token_repvggdw/conv1x1",
                                               "channel_expand/conv", "channel_project/conv"))}),
        "hdvt": (DHVT(num_classes=3, dim=8, depth=1, heads=2, mlp_ratio=2),
                 {"sope/conv0", "sope/conv1", "head",
                  *(f"block0_attn/{m}" for m in ("ht_proj", "mhsa/qkv", "mhsa/proj")),
                  *(f"block0_daff/{m}" for m in ("conv1", "conv2", "conv3", "compress", "excitation"))})}


# -m slow: each compiles a whole (tiny) network (~15 s of CPU); the layer types are checked below
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_model_trains_and_its_layers_are_captured(name):
    model, layers = TINY[name]
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 3)), jnp.float32)
    y = jnp.asarray([0, 2])
    variables = jax.jit(lambda k: model.init(k, x, train=False))(jax.random.PRNGKey(0))  # eagerly: ~60 s, op by op

    def apply(v, inputs):
        return model.apply(v, inputs, train=True, mutable=["batch_stats"])[0]

    def run(v):
        loss, cap = capture(apply, v, x, y, _xent)
        grads = jax.grad(lambda p: _xent(apply({**v, "params": p}, x), y))(v["params"])
        return apply(v, x), loss, grads, cap

    out, loss, grads, cap = jax.jit(run).lower(variables).compile(compiler_options=COMPILER_OPTIONS)(variables)
    assert out.shape == (2, 3) and np.isfinite(float(loss))
    np.testing.assert_allclose(np.exp(np.asarray(out)).sum(1), 1.0, rtol=1e-5)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))
    assert {"/".join(k[:-1]) for k in cap} == layers
    _check_capture(cap, grads, grouped={p for p in layers if p.endswith(GROUPED)})


# --- the capture of each new layer type, on a bare layer -------------------------------------------


class _Wrap(nn.Module):
    """One layer under test (BatchNorms on their running averages), then a mean over positions and
    a Dense head to 3 log-probabilities."""

    layer: nn.Module
    takes_train: bool = False

    @nn.compact
    def __call__(self, x):
        h = self.layer(x, False) if self.takes_train else self.layer(x)
        h = h.reshape(h.shape[0], -1, h.shape[-1]).mean(1)
        return nn.log_softmax(nn.Dense(3, name="head")(h))


CASES = {
    # RepViT's SE: 1x1 convs on the pooled (B, 1, 1, C) features, one row per sample
    "squeeze_excite": (SqueezeExcite(), False, (3, 4, 4, 8), {"layer/fc1", "layer/fc2", "head"}),
    # DHVT's head interaction: a Dense on the per-head token means (rows: batch x heads), then the
    # fused qkv and proj over the tokens and the appended head tokens
    "head_interaction": (HIAttention(heads=2), False, (3, 5, 8),
                         {"layer/ht_proj", "layer/mhsa/qkv", "layer/mhsa/proj", "head"}),
    # DHVT's DAFF: 1x1 convs over the patch tokens only (the class token is no row), a depthwise
    # conv, and two Dense on the pooled features that scale the class token only
    "daff": (DAFF(hidden=16), True, (3, 5, 8),
             {"layer/conv1", "layer/conv2", "layer/conv3", "layer/compress", "layer/excitation", "head"}),
}



def _random_variables(model, x):
    """The model's variables at random values (parameters N(0, 0.5²), BatchNorm statistics in
    [0.5, 1.5)), from shapes alone: no initialiser's RNG to compile."""
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    rng = np.random.default_rng(0)

    def fill(path, s):
        stats = path[0].key == "batch_stats"
        return jnp.asarray(rng.uniform(0.5, 1.5, s.shape) if stats else 0.5 * rng.normal(size=s.shape), s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.mark.parametrize("case", sorted(CASES))
def test_capture_reproduces_the_gradient_of_each_new_layer_type(case):
    layer, takes_train, shape, layers = CASES[case]
    x = jnp.asarray(np.random.default_rng(1).normal(size=shape), jnp.float32)
    y = jnp.asarray([0, 1, 2])
    model = _Wrap(layer, takes_train)
    variables = _random_variables(model, x)

    def run(v):
        _, cap = capture(model.apply, v, x, y, _xent)
        return cap, jax.grad(lambda p: _xent(model.apply({**v, "params": p}, x), y))(v["params"])

    cap, grads = jax.jit(run).lower(variables).compile(compiler_options=COMPILER_OPTIONS)(variables)
    assert {"/".join(k[:-1]) for k in cap} == layers
    _check_capture(cap, grads, grouped={"layer/conv2"})
