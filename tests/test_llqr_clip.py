"""The inner solver's norm clip acts on the reference's block arrays (float64 oracles).

The reference's diagonal block is one vector over a whole controlled layer (kernel and bias
flattened together), so its per-array L2 clip scales a layer's kernel and bias entries by one
factor. The oracle below re-derives that fit on flat layer vectors with a dense curvature matrix
and compares it with ``fit_blocks``, with the clip active at every inner step.
"""

import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from llqr.optim import apply_blocks, fit_blocks, init_blocks, make_problem
from llqr.optim.exact import curvature_matrix
from llqr.optim.structures import clip_groups, layer_labels
from test_llqr import TanhMLP, _enable_x64, _setup


@pytest.fixture(autouse=True)
def x64():
    with _enable_x64():
        yield


def _reference_diagonal_fit(H, g, segments, *, steps, lr, momentum, clip_norm, damping):
    """The reference's diagonal fit on flat vectors: p over all parameters, J(p) = 1/2 (p*g)^T
    (H + λI)(p*g) - g^T (p*g); each step clips every ``segments`` slice (one controlled layer, or
    one array for the per-array variant) by clip / max(clip, norm), then heavy-ball SGD."""
    A = H + damping * jnp.eye(len(g))
    p, trace = jnp.ones_like(g), jnp.zeros_like(g)
    for _ in range(steps):
        grad = g * (A @ (p * g) - g)
        for sl in segments:
            norm = jnp.linalg.norm(grad[sl])
            grad = grad.at[sl].multiply(clip_norm / jnp.maximum(clip_norm, norm))
        trace = grad + momentum * trace
        p = p - lr * trace
    return p


def _segments(tree_of_groups):
    """Contiguous slices of the flat vector: one per group, in flatten order."""
    sizes = {}
    order = []
    for name, leaf in tree_of_groups:
        if name not in sizes:
            order.append(name)
            sizes[name] = 0
        sizes[name] += leaf.size
    out, start = [], 0
    for name in order:
        out.append(slice(start, start + sizes[name]))
        start += sizes[name]
    return out


@pytest.mark.parametrize("divergence", ["ngd", pytest.param("newton", marks=pytest.mark.slow)])
def test_diagonal_fit_clips_each_controlled_layer_as_one_vector(divergence):
    f, params, x, y = _setup(TanhMLP(), (4,), n=8)
    damping, steps, lr, clip = 0.1, 12, 0.5, 1e-3
    H, g, _ = curvature_matrix(f, params, x, y, divergence=divergence)
    leaves = jax.tree_util.tree_leaves(params)
    labels = jax.tree_util.tree_leaves(layer_labels(params))
    per_layer = _segments(zip(labels, leaves))
    per_array = _segments(zip(range(len(leaves)), leaves))
    assert len(per_layer) == 2 and len(per_array) == 4  # two Dense layers, each kernel + bias

    problem = make_problem(f, params, x, y, divergence=divergence, damping=damping)
    fitted, _ = fit_blocks(problem, "diagonal", init_blocks("diagonal", params), steps=steps, lr=lr,
                           momentum=0.9, clip_norm=clip)
    got = jax.flatten_util.ravel_pytree(fitted)[0]

    kwargs = dict(steps=steps, lr=lr, momentum=0.9, clip_norm=clip, damping=damping)
    want = _reference_diagonal_fit(H, g, per_layer, **kwargs)
    wrong = _reference_diagonal_fit(H, g, per_array, **kwargs)
    # the clip is active on every layer at the start (the whole point of the oracle) ...
    first = g * (H + damping * jnp.eye(len(g))) @ g - g * g
    assert all(float(jnp.linalg.norm(first[sl])) > 10 * clip for sl in per_layer)
    # ... and a per-array clip would give a visibly different P
    assert float(jnp.max(jnp.abs(want - wrong))) > 1e-2 * float(jnp.max(jnp.abs(want - 1.0)))
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)


def test_factored_structures_clip_each_block_array_on_its_own():
    _, params, _, _ = _setup(TanhMLP(), (4,))
    for structure in ("e-kfac", "kfac", "diag-kfac", "sep-e-kfac", "scalar", "dense"):
        blocks = init_blocks(structure, params)
        groups = jax.tree_util.tree_leaves(clip_groups(structure, blocks))
        assert len(set(groups)) == len(jax.tree_util.tree_leaves(blocks)), structure
    groups = clip_groups("diagonal", init_blocks("diagonal", params))
    assert groups == {"Dense_0": {"bias": {"d": "Dense_0"}, "kernel": {"d": "Dense_0"}},
                      "Dense_1": {"bias": {"d": "Dense_1"}, "kernel": {"d": "Dense_1"}}}


class TwoGroups(nn.Module):
    """One top-level group holding two of the reference's layers (as our Transformer's layers do)."""

    @nn.compact
    def __call__(self, x):
        return nn.log_softmax(Block(name="block")(x))


class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3, name="out")(jnp.tanh(nn.Dense(5, name="inner")(x)))


def _by_module(names):
    return "/".join(names[:2])


def test_layer_of_splits_top_level_groups_for_scalar_dense_and_the_diagonal_clip():
    model = TwoGroups()
    x = jax.random.normal(jax.random.PRNGKey(0), (6, 4), jnp.float64)
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), model.init(jax.random.PRNGKey(1), x)["params"])
    g = jax.tree_util.tree_map(lambda a: jnp.full_like(a, 2.0), params)
    scalar = init_blocks("scalar", params, layer_of=_by_module)
    assert set(scalar) == {"block/inner", "block/out"}
    scalar = {"block/inner": jnp.asarray(3.0), "block/out": jnp.asarray(5.0)}
    out = apply_blocks("scalar", scalar, g, layer_of=_by_module)
    assert float(out["block"]["inner"]["kernel"][0, 0]) == 6.0 and float(out["block"]["out"]["bias"][0]) == 10.0
    dense = init_blocks("dense", params, layer_of=_by_module)
    assert dense["block/inner"].shape == (4 * 5 + 5,) * 2 and dense["block/out"].shape == (5 * 3 + 3,) * 2
    same = apply_blocks("dense", dense, g, layer_of=_by_module)
    assert all(jnp.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(same), jax.tree_util.tree_leaves(g)))
    groups = set(jax.tree_util.tree_leaves(clip_groups("diagonal", init_blocks("diagonal", params), _by_module)))
    assert groups == {"block/inner", "block/out"}


def test_transformer_parameters_fall_into_the_reference_layers():
    from llqr.models.transformer import TransformerMT, controlled_layer

    model = TransformerMT(src_vocab=11, tgt_vocab=13, embed_dim=8, ffn_dim=16, heads=2, encoder_layers=2,
                          decoder_layers=1, max_positions=16)
    src = jnp.full((2, 5), 4, jnp.int32)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), (src, src))["params"])
    labels = jax.tree_util.tree_leaves(layer_labels(params, controlled_layer))
    names = set(labels)
    # embeddings; per encoder layer: attention, its norm, fc1, fc2 + norm;
    # per decoder layer: also cross-attention + norm
    assert len(names) == 1 + 2 * 4 + 1 * 6, sorted(names)
    assert {"embed", "encoder_0/self_attn", "encoder_0/self_attn_ln", "encoder_0/fc1", "encoder_0/fc2_ln",
            "decoder_0/cross_attn", "decoder_0/cross_attn_ln"} <= names
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): lab
            for path, lab in jax.tree_util.tree_leaves_with_path(layer_labels(params, controlled_layer))}
    assert flat["encoder_1/ffn/fc2/bias"] == flat["encoder_1/ffn_ln/scale"] == "encoder_1/fc2_ln"
    assert flat["src_embed/embedding"] == flat["tgt_embed/embedding"] == "embed"
