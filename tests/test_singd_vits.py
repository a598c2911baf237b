"""The SINGD study's Swin-ViT and GC-ViT: parameter counts against the references' layer lists,
the input-size layouts, the window helpers, tiny forward/backward passes, and the Kronecker capture
of their new layer types (window attention's fused qkv with a relative position bias and shift
mask between qkv and proj, patch merging's Dense, GC-ViT's global-query kv Dense)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llqr.config import ConfigError, resolve
from llqr.config.runnable import SMALL_IMAGE_SIDES, check_runnable
from llqr.models.gcvit import GCViT, GCViTBlock, gcvit_layout
from llqr.models.swin import (
    MASKED,
    PatchMerging,
    Swin,
    SwinBlock,
    relative_position_index,
    shift_mask,
    swin_layout,
    window_partition,
    window_reverse,
)
from llqr.optim.capture import capture
from llqr.optim.structures import num_params
from reference_counts import conv as _conv, layernorm as _ln, linear as _linear, xent as _xent
from xla_test_flags import COMPILER_OPTIONS


def _fast_jit(fn, *args):
    """These programs compile in about a tenth of the default time with the suite's options."""
    return jax.jit(fn).lower(*args).compile(compiler_options=COMPILER_OPTIONS)


def _random_params(model, x, scale=0.3):
    """Seeded normal parameters of the model's shapes: compiling Flax's initialisers takes longer
    than the model (tens of seconds on 2 CPU cores), and these tests need no particular init."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))["params"]
    rng = np.random.default_rng(0)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(rng.normal(0.0, scale, s.shape), s.dtype), shapes)


# --- parameter counts: the references' torch layer lists, counted by hand ----------------------------


def swin_reference_count(classes, image, patch, window, dim=96, depths=(2, 6, 4), heads=(3, 6, 12), mlp_ratio=2):
    """SPT_LSA_ViT's ``SwinTransformer``: PatchEmbed Conv2d(3, D, p, stride p) + LayerNorm,
    absolute_pos_embed (1, (H/p)², D); per SwinTransformerBlock norm1, WindowAttention
    (relative_position_bias_table ((2w-1)², heads) with w = min(window, resolution), qkv Linear(C, 3C),
    proj Linear(C, C)), norm2, Mlp fc1/fc2; PatchMerging LayerNorm(4C) + Linear(4C, 2C, bias=False)
    after every stage but the last; norm, head Linear(C, classes)."""
    res = image // patch
    total = _conv(3, dim, patch) + _ln(dim) + res * res * dim
    c = dim
    for s, (depth, h) in enumerate(zip(depths, heads)):
        w = min(window, res)
        block = _ln(c) + (2 * w - 1) ** 2 * h + _linear(c, 3 * c) + _linear(c, c) + _ln(c) \
            + _linear(c, mlp_ratio * c) + _linear(mlp_ratio * c, c)
        total += depth * block
        if s < len(depths) - 1:
            total += _ln(4 * c) + _linear(4 * c, 2 * c, bias=False)
            c, res = 2 * c, res // 2
    return total + _ln(c) + _linear(c, classes)


def _gc_branch(c):
    """ReduceSize's / FeatExtract's ``conv``: Conv2d(c, c, 3, groups=c, bias=False), GELU, SE(c, c)
    (Linear(c, c/4, bias=False), GELU, Linear(c/4, c, bias=False), Sigmoid), Conv2d(c, c, 1, bias=False)."""
    return _conv(c, c, 3, groups=c, bias=False) + _linear(c, c // 4, bias=False) + _linear(c // 4, c, bias=False) \
        + _conv(c, c, 1, bias=False)


def gcvit_reference_count(classes, stem_stride, windows, generators, dim=64, depths=(2, 2, 6, 2),
                          heads=(2, 4, 8, 16), mlp_ratio=3):
    """NVlabs' ``GCViT`` (gc_vit_xxtiny): PatchEmbed Conv2d(3, D, 3, stride, 1) + ReduceSize(D, keep_dim)
    (norm1, conv branch, reduction Conv2d(D, D, 3, 2, 1, bias=False), norm2); per level
    ``generators[i]`` FeatExtracts (conv branch each) for the global query, blocks alternating
    WindowAttention (qkv Linear(C, 3C)) and WindowAttentionGlobal (qkv Linear(C, 2C)), both with a
    ((2w-1)², heads) table and proj, plus norm1, norm2, Mlp; ReduceSize(C -> 2C) after all but the
    last level; norm, head. ``stem_stride`` is the first conv's (2: the reference)."""
    del stem_stride  # a conv's parameters do not depend on its stride
    total = _conv(3, dim, 3) + _ln(dim) + _gc_branch(dim) + _conv(dim, dim, 3, bias=False) + _ln(dim)
    c = dim
    for i, (depth, h, w, n) in enumerate(zip(depths, heads, windows, generators)):
        total += n * _gc_branch(c)
        for k in range(depth):
            qkv = _linear(c, 2 * c) if k % 2 else _linear(c, 3 * c)
            total += _ln(c) + (2 * w - 1) ** 2 * h + qkv + _linear(c, c) + _ln(c) + _linear(c, mlp_ratio * c) \
                + _linear(mlp_ratio * c, c)
        if i < len(depths) - 1:
            total += _ln(c) + _gc_branch(c) + _conv(c, 2 * c, 3, bias=False) + _ln(2 * c)
            c *= 2
    return total + _ln(c) + _linear(c, classes)


# (model, classes, image) -> reference count; the layouts are the modules' documented ones
SWIN_CASES = {(100, 32): dict(patch=2, window=4), (10, 224): dict(patch=4, window=7)}
# the reference's generator table: 56/7 -> 3, 28/7 -> 2, 14/14 -> 1, 7/7 -> 1; ours at 32: 16/4 -> 2, 8/4 -> 1, ...
GCVIT_CASES = {(100, 32): dict(stem_stride=1, windows=(4, 4, 4, 2), generators=(2, 1, 1, 1)),
               (10, 224): dict(stem_stride=2, windows=(7, 7, 14, 7), generators=(3, 2, 1, 1))}


def _count(model, image):
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, image, image, 3))))
    return num_params(variables["params"])


@pytest.mark.parametrize("classes,image", sorted(SWIN_CASES), ids=["cifar100@32", "imagewoof@224"])
def test_swin_parameter_count_is_the_reference_layer_list(classes, image):
    want = swin_reference_count(classes, image, **SWIN_CASES[classes, image])
    assert _count(Swin(num_classes=classes), image) == want


@pytest.mark.parametrize("classes,image", sorted(GCVIT_CASES), ids=["cifar100@32", "imagewoof@224"])
def test_gcvit_parameter_count_is_the_reference_layer_list(classes, image):
    assert _count(GCViT(num_classes=classes), image) == gcvit_reference_count(classes, **GCVIT_CASES[classes, image])


def test_the_documented_counts():
    """The docstrings' figures; GC-ViT-XXT at 224 with 1,000 classes is the reference's quoted 12M."""
    assert swin_reference_count(100, 32, **SWIN_CASES[100, 32]) == 7_107_838
    assert swin_reference_count(10, 224, **SWIN_CASES[10, 224]) == 7_363_924
    assert gcvit_reference_count(100, **GCVIT_CASES[100, 32]) == 11_462_080
    assert gcvit_reference_count(10, **GCVIT_CASES[10, 224]) == 11_487_558
    assert round(gcvit_reference_count(1000, **GCVIT_CASES[10, 224]) / 1e6) == 12


def test_layouts_follow_the_image_size():
    assert swin_layout(32, 3) == (2, (4, 4, 4))  # stages 16, 8, 4: the last one whole, unshifted
    assert swin_layout(224, 3) == (4, (7, 7, 7))  # 56, 28, 14: 4 does not divide 14
    assert gcvit_layout(32) == (2, (16, 8, 4, 2), (4, 4, 4, 2))
    assert gcvit_layout(224) == (4, (56, 28, 14, 7), (7, 7, 14, 7))
    with pytest.raises(ValueError, match="not divisible"):
        swin_layout(30, 3)
    with pytest.raises(ValueError, match="not divisible"):
        gcvit_layout(40)


# --- window helpers against their definitions ----------------------------------------------------


def test_window_partition_round_trips_and_orders_windows_image_major():
    x = np.arange(2 * 8 * 8 * 3, dtype=np.float32).reshape(2, 8, 8, 3)
    win = np.asarray(window_partition(x, 4))
    assert win.shape == (2 * 4, 16, 3)
    np.testing.assert_array_equal(win[1].reshape(4, 4, 3), x[0, :4, 4:])  # image 0, window (0, 1)
    np.testing.assert_array_equal(win[6].reshape(4, 4, 3), x[1, 4:, :4])  # image 1, window (1, 0)
    np.testing.assert_array_equal(np.asarray(window_reverse(win, 4, 8, 8)), x)


def test_relative_position_index_is_each_pairs_offset():
    w = 3
    idx = relative_position_index(w)
    for i in range(w * w):
        for j in range(w * w):
            dy, dx = i // w - j // w, i % w - j % w
            assert idx[i, j] == (dy + w - 1) * (2 * w - 1) + (dx + w - 1)


def test_shift_mask_separates_tokens_that_the_roll_made_neighbours():
    res, w, s = 8, 4, 2
    mask = shift_mask(res, w, s)
    # token (y, x) of the rolled map came from across the border iff its coordinate is >= res - s
    coords = np.asarray(window_partition(np.stack(np.meshgrid(np.arange(res), np.arange(res), indexing="ij"),
                                                  axis=-1)[None], w))  # (nW, w², 2)
    wrapped = coords >= res - s
    apart = (wrapped[:, :, None, :] != wrapped[:, None, :, :]).any(-1)
    np.testing.assert_array_equal(mask, np.where(apart, MASKED, 0.0))
    assert not mask[0].any() and mask[-1].any()


# --- tiny forward/backward -----------------------------------------------------------------------


# two stages/levels of two blocks: a shifted block, a merge / a global block, a ReduceSize
TINY = {"swin": Swin(num_classes=3, dim=8, depths=(2, 2), heads=(2, 2)),
        "gcvit": GCViT(num_classes=3, dim=8, depths=(2, 2), heads=(2, 2))}


# -m slow: 4-8 s of CPU each (tracing and compiling the whole model); the default tests trace every
# layer through the parameter counts' eval_shape and check the new layers' capture below
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_model_trains_and_keeps_images_apart(name):
    """Output shape, log-probabilities, finite non-zero gradients; an image's output does not depend
    on the rest of the batch (GC-ViT: each window uses its own image's global query); the capture
    sees every Dense and Conv (every kernel) and reproduces the kernel gradients of the ungrouped ones."""
    model = TINY[name]
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
    y = jnp.asarray([0, 2])

    def run(params):
        loss, grads = jax.value_and_grad(lambda p: _xent(model.apply({"params": p}, x), y))(params)
        _, cap = capture(model.apply, {"params": params}, x, y, _xent)
        return (model.apply({"params": params}, x), model.apply({"params": params}, x.at[1].set(-x[1])), loss,
                grads, cap)

    params = _random_params(model, x)
    out, other, loss, grads, cap = _fast_jit(run, params)(params)
    assert out.shape == (2, 3) and np.isfinite(float(loss))
    np.testing.assert_allclose(np.exp(np.asarray(out)).sum(1), 1.0, rtol=1e-5)
    assert all(np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).sum() > 0
               for g in jax.tree_util.tree_leaves(grads))
    np.testing.assert_allclose(np.asarray(other[0]), np.asarray(out[0]), rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.asarray(other[1]), np.asarray(out[1]))
    kernels = {path[:-1] for path, _ in jax.tree_util.tree_flatten_with_path(grads)[0] if path[-1].key == "kernel"}
    assert {k[:-1] for k in cap} == {tuple(p.key for p in k) for k in kernels}
    for path, (a, g) in cap.items():
        if path[-2] == "dw":
            continue  # grouped: an approximation by design (tests/test_singd_models.py)
        kernel = np.asarray(_leaf(grads, path))
        np.testing.assert_allclose(np.asarray(a.T @ g)[:kernel.reshape(-1, kernel.shape[-1]).shape[0]],
                                   kernel.reshape(-1, kernel.shape[-1]), rtol=1e-3, atol=1e-5)


# --- the capture of each new layer type, on a bare layer -------------------------------------------


class _GlobalBlock(nn.Module):
    """GC-ViT's global block with its query tokens from a captured Dense of the mean-pooled map."""

    @nn.compact
    def __call__(self, x):
        b, _, _, c = x.shape
        q = nn.Dense(4 * c, name="to_q")(x.mean(axis=(1, 2))).reshape(b, 4, c)  # a 2x2 window's queries
        return GCViTBlock(heads=2, window=2, use_global=True, mlp_ratio=2, name="layer")(x, q)


class _Wrap(nn.Module):
    """One (B, H, W, C) layer under test, then a mean over positions and a Dense head to 3 classes."""

    layer: nn.Module

    @nn.compact
    def __call__(self, x):
        h = self.layer(x)
        return nn.log_softmax(nn.Dense(3, name="head")(h.reshape(h.shape[0], -1, h.shape[-1]).mean(1)))


CASES = {  # layer, input shape, the captured layers (module paths) whose kernel gradient is checked
    "shifted_window_attention": (SwinBlock(heads=2, window=2, shift=1), (3, 4, 4, 4),
                                 ["layer/attn/qkv", "layer/attn/proj", "layer/fc1", "layer/fc2"]),
    "patch_merging": (PatchMerging(), (3, 4, 4, 4), ["layer/reduction"]),
    "global_query_attention": (_GlobalBlock(), (3, 4, 4, 4), ["layer/layer/attn/kv", "layer/layer/attn/proj",
                                                              "layer/layer/fc1", "layer/layer/fc2", "layer/to_q"]),
}


def _leaf(tree, names):
    for n in names:
        tree = tree[n]
    return tree


@pytest.mark.parametrize("case", sorted(CASES))
def test_capture_reproduces_the_kernel_gradient(case):
    layer, shape, paths = CASES[case]
    x = jnp.asarray(np.random.default_rng(1).normal(size=shape), jnp.float32)
    y = jnp.asarray([0, 1, 2])
    model = _Wrap(layer)

    def run(params):
        _, cap = capture(model.apply, {"params": params}, x, y, _xent)
        return cap, jax.grad(lambda p: _xent(model.apply({"params": p}, x), y))(params)

    params = _random_params(model, x)
    cap, grads = _fast_jit(run, params)(params)
    captured = {"/".join(k[:-1]) for k in cap}
    assert set(paths) | {"head"} == captured  # the bias tables and LayerNorms are not captured
    for path in paths:
        a, g = cap[tuple(path.split("/")) + ("kernel",)]
        layer_grads = _leaf(grads, path.split("/"))
        kernel = np.asarray(layer_grads["kernel"])
        gw = np.asarray(a.T @ g)
        assert np.abs(kernel).max() > 0
        np.testing.assert_allclose(gw[:kernel.shape[0]], kernel, rtol=1e-4, atol=1e-6)
        if "bias" in layer_grads:
            np.testing.assert_allclose(gw[-1], layer_grads["bias"], rtol=1e-4, atol=1e-6)
        else:
            assert gw.shape[0] == kernel.shape[0]


# --- the shifted window block against a token-by-token definition ---------------------------------


def _layer_norm(x, p):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"]


def _gelu(x):
    from math import erf

    return 0.5 * x * (1 + np.vectorize(erf)(x / np.sqrt(2)))


def _dense(x, p):
    return x @ p["kernel"] + p.get("bias", 0.0)


def test_shifted_window_block_is_the_token_by_token_definition():
    """Token t at (i, j) sits at (i - s, j - s) mod H of the rolled map; it attends to the tokens of
    its window there, with the table's bias of their offset and MASKED between the rolled map's
    regions ([0, H-w), [H-w, H-s), [H-s, H) per axis), then the residual MLP: the reference's block."""
    h, w, s, heads, c = 4, 2, 1, 2, 4
    block = SwinBlock(heads=heads, window=w, shift=s)
    x = jnp.asarray(np.random.default_rng(3).normal(size=(1, h, h, c)), jnp.float32)
    params = _random_params(block, x)
    out = np.asarray(_fast_jit(lambda p: block.apply({"params": p}, x), params)(params))[0]
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    table = p["rel_pos"]["relative_position_bias_table"]
    xs = np.asarray(x, np.float64)[0].reshape(h * h, c)
    qkv = _dense(_layer_norm(xs, p["norm1"]), p["attn"]["qkv"]).reshape(h * h, 3, heads, c // heads)
    rolled = [((t // h - s) % h, (t % h - s) % h) for t in range(h * h)]

    def region(v):
        return 0 if v < h - w else (1 if v < h - s else 2)

    attn = np.zeros((h * h, heads, c // heads))
    for t, (yi, xi) in enumerate(rolled):
        keys = [u for u, (yu, xu) in enumerate(rolled) if (yu // w, xu // w) == (yi // w, xi // w)]
        for k in range(heads):
            logits = []
            for u in keys:
                yu, xu = rolled[u]
                bias = table[(yi - yu + w - 1) * (2 * w - 1) + (xi - xu + w - 1), k]
                apart = (region(yi), region(xi)) != (region(yu), region(xu))
                logits.append(qkv[t, 0, k] @ qkv[u, 1, k] / np.sqrt(c // heads) + bias + (MASKED if apart else 0.0))
            weights = np.exp(np.array(logits) - max(logits))
            attn[t, k] = (weights / weights.sum()) @ qkv[keys, 2, k]
    y = xs + _dense(attn.reshape(h * h, c), p["attn"]["proj"])
    y = y + _dense(_gelu(_dense(_layer_norm(y, p["norm2"]), p["fc1"])), p["fc2"])
    np.testing.assert_allclose(out.reshape(h * h, c), y, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dataset", sorted(SMALL_IMAGE_SIDES))
def test_the_config_refuses_exactly_the_small_images_the_window_layouts_cannot_take(dataset):
    """llqr.config.runnable's divisors (JAX-free, checked before a job is queued) against the layouts."""
    side = SMALL_IMAGE_SIDES[dataset]
    for model, layout in (("swin", lambda s: swin_layout(s, 3)), ("gcvit", gcvit_layout)):
        try:
            layout(side)
            fits = True
        except ValueError:
            fits = False
        try:
            check_runnable(resolve("digits-mlp-smoke", {"model": model, "dataset": dataset}))
            accepted = True
        except ConfigError:
            accepted = False
        assert accepted == fits, (model, dataset)
