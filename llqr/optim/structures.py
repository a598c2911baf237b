"""Block structures of the preconditioner P: per-leaf parameters, their identity init and action.

P is block-diagonal over parameter leaves. A kernel leaf is viewed as a matrix X (m x n): Dense
(in, out), Conv (kh*kw*cin, cout), attention query/key/value (emb, heads*head_dim), anything else
of rank >= 2 (attention out, embeddings) as (prod(leading), last). Leaves of rank < 2 (biases,
norm scales) get a diagonal vector in every family.

A *controlled layer* is the reference's unit of P: one stage with parameters (a Conv, a BatchNorm,
a Dense with its bias, an attention block). Our vision models hold one per top-level parameter
group; a model whose groups are coarser (the Transformer) passes ``layer_of``, which names each
leaf's layer from its path. ``scalar`` and ``dense`` hold one block per controlled layer. The
reference's ``diagonal`` block is one vector over the whole flattened layer: we keep one vector per
leaf (the same elementwise product) but the inner solver clips it per layer (``clip_groups``), as
the reference clips its single vector. Applying the identity init returns g exactly (``kfac`` and
``diag-kfac``: s*g, the reference's quirk of scaling both factors, which the runner divides by s).

``exact`` is ours, not the reference's: one matrix over all parameters, set at each fit to the
exact (H_D + λI)^-1 by a dense solve (``llqr.optim.exact``) instead of being fitted; it is the
"exact vs relaxed" yardstick and is refused above ``EXACT_MAX_PARAMS`` parameters.

The structure names (and EXACT_MAX_PARAMS) are ``llqr.config.families.BLOCK_STRUCTURES``: the config
layer owns the list and this module dispatches on it (tests/test_families.py checks both ways).
"""

from __future__ import annotations

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from ..config.families import BLOCK_STRUCTURES, EXACT_MAX_PARAMS

FAMILIES = BLOCK_STRUCTURES  # the config's list (llqr.optim.FAMILIES), not a copy
CLAMPED = ("scalar", "diagonal")  # clamped at >= 1e-8 unless allow_grad_inversion
PSD_EPS = 1e-8
_IN_PROJECTIONS = ("query", "key", "value", "qkv")  # attention input projections: (emb, heads, head_dim)


class StructureTooLarge(ValueError):
    """The chosen structure would materialise matrices too large for this model."""


def _path_names(path) -> list[str]:
    return [str(getattr(k, "key", getattr(k, "name", k))) for k in path]


def _as_matrix_shape(shape, path=()) -> tuple[int, int]:
    """(m, n) of the kernel matrix: attention input projections split after the embedding axis,
    everything else before the last axis."""
    if len(shape) == 3 and any(name in _IN_PROJECTIONS for name in _path_names(path)):
        return int(shape[0]), int(np.prod(shape[1:]))
    return int(np.prod(shape[:-1])), int(shape[-1])


def _eye(n, s=1.0, dtype=jnp.float32):
    return s * jnp.eye(n, dtype=dtype)


def _leaf_init(structure: str, leaf, s: float, path=()):
    if leaf.ndim < 2 or structure == "diagonal":
        return {"d": jnp.full(leaf.shape, s, jnp.float32)}
    m, n = _as_matrix_shape(leaf.shape, path)
    if structure == "kfac":
        return {"A": _eye(m, s), "B": _eye(n, s)}
    if structure == "diag-kfac":
        return {"a": jnp.full((m,), s, jnp.float32), "b": jnp.full((n,), s, jnp.float32)}
    if structure == "e-kfac":
        return {"QA": _eye(m), "QG": _eye(n), "d": jnp.full((m, n), s, jnp.float32)}
    if structure == "psd-e-kfac":
        return {"QA": _eye(m), "QG": _eye(n), "r": jnp.full((m, n), np.sqrt(s), jnp.float32)}
    if structure == "sep-e-kfac":
        return {"QA": _eye(m), "QG": _eye(n), "a": jnp.full((m,), s, jnp.float32), "g": jnp.ones((n,), jnp.float32)}
    if structure == "psd-sep-e-kfac":
        return {"QA": _eye(m), "QG": _eye(n), "ra": jnp.full((m,), np.sqrt(s), jnp.float32),
                "rg": jnp.ones((n,), jnp.float32)}
    raise ValueError(f"unknown block structure {structure!r}")


def _rows(block) -> int:
    """m of the leaf's matrix view, read back from the block that was built for it."""
    for name in ("A", "QA", "a"):
        if name in block:
            return block[name].shape[0]
    raise ValueError(f"not a factored block: {sorted(block)}")


def _eigenbasis_apply(QA, QG, d, X):
    """QA [d ⊙ (QAᵀ X QG)] QGᵀ, the e-kfac product, arranged for XLA:CPU.

    A dot that reads its left operand transposed (QAᵀ X) runs there on a slower path than a
    row-major one (784 x 784 by 784 x 100: 1.5 vs 1.16 ms), and XLA folds any transpose written
    around it back into that form. So the big product is taken as Xᵀ QA on a materialised Xᵀ (a
    copy of the small gradient), both behind optimization barriers, and only the n x n product
    reads its operand transposed; the preconditioned MLP step gets about 8% faster
    (benchmarks/llqr_overhead.py). The same arithmetic, so the same result up to rounding.
    """
    xt_qa = jax.lax.optimization_barrier(jax.lax.optimization_barrier(X.T) @ QA)  # (QAᵀ X)ᵀ, n x m
    return (QA @ (d * (xt_qa.T @ QG))) @ QG.T


def _leaf_apply(structure: str, block, g):
    if "d" in block and len(block) == 1:
        return block["d"] * g
    X = g.reshape(_rows(block), -1)
    if structure == "kfac":
        Y = block["A"] @ X @ block["B"].T
    elif structure == "diag-kfac":
        Y = block["a"][:, None] * X * block["b"][None, :]
    elif structure in ("e-kfac", "psd-e-kfac"):
        d = block["d"] if "d" in block else block["r"] ** 2 + PSD_EPS
        Y = _eigenbasis_apply(block["QA"], block["QG"], d, X)
    elif structure in ("sep-e-kfac", "psd-sep-e-kfac"):
        a, gg = (block["a"], block["g"]) if "a" in block else (block["ra"] ** 2 + PSD_EPS, block["rg"] ** 2 + PSD_EPS)
        # (QA diag(a) QAᵀ) X (QG diag(g) QGᵀ) = QA [(a gᵀ) ⊙ (QAᵀ X QG)] QGᵀ: no m x m product
        Y = _eigenbasis_apply(block["QA"], block["QG"], a[:, None] * gg[None, :], X)
    else:
        raise ValueError(f"unknown block structure {structure!r}")
    return Y.reshape(g.shape)


def layer_labels(params, layer_of=None):
    """A pytree like ``params`` naming each leaf's controlled layer: ``layer_of(path names)``, by
    default the top-level group (a bare array is one layer, ``"params"``)."""
    if not isinstance(params, dict):
        return jax.tree_util.tree_map(lambda _: "params", params)
    name = layer_of or (lambda names: names[0])
    return jax.tree_util.tree_map_with_path(lambda path, _: name(tuple(_path_names(path))), params)


def _groups(tree, layer_of=None):
    """(leaves, treedef, {layer: [leaf indices in flatten order]}) of ``tree``."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(jax.tree_util.tree_leaves(layer_labels(tree, layer_of))):
        groups.setdefault(name, []).append(i)
    return leaves, treedef, groups


def num_params(params) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))


def init_blocks(structure: str, params, scale: float = 1.0, layer_of=None):
    """Identity-initialised blocks for ``params`` (any pytree of arrays)."""
    if structure == "exact":
        n = num_params(params)
        if n > EXACT_MAX_PARAMS:
            raise StructureTooLarge(
                f"block_structure=exact materialises the {n} x {n} curvature of this model's {n} parameters; "
                f"it is a reference for models of at most {EXACT_MAX_PARAMS} parameters (use dense, e-kfac or "
                f"diagonal here)")
        dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))
        return {"P": _eye(n, scale, dtype)}
    if structure in ("scalar", "dense"):
        leaves, _, groups = _groups(params, layer_of)
        out = {}
        for name, idx in groups.items():
            dtype = jnp.result_type(*(leaves[i] for i in idx))
            size = sum(int(np.prod(leaves[i].shape)) for i in idx)
            out[name] = jnp.asarray(scale, dtype) if structure == "scalar" else _eye(size, scale, dtype)
        return out
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: jax.tree_util.tree_map(lambda b: b.astype(leaf.dtype),
                                                  _leaf_init(structure, leaf, scale, path)), params)


def _apply_per_layer(structure: str, blocks, tree, layer_of):
    leaves, treedef, groups = _groups(tree, layer_of)
    out = list(leaves)
    for name, idx in groups.items():
        if structure == "scalar":
            for i in idx:
                out[i] = blocks[name] * leaves[i]
            continue
        flat = blocks[name] @ jnp.concatenate([jnp.ravel(leaves[i]) for i in idx])
        offset = 0
        for i in idx:
            size = int(np.prod(leaves[i].shape))
            out[i] = flat[offset:offset + size].reshape(leaves[i].shape)
            offset += size
    return jax.tree_util.tree_unflatten(treedef, out)


def _is_block(x) -> bool:
    return isinstance(x, dict) and all(not isinstance(v, dict) for v in x.values())


def apply_blocks(structure: str, blocks, tree, layer_of=None):
    """P @ tree (undivided by the identity scaling)."""
    if structure == "exact":
        flat, unravel = jax.flatten_util.ravel_pytree(tree)
        return unravel(blocks["P"] @ flat)
    if structure in ("scalar", "dense"):
        return _apply_per_layer(structure, blocks, tree, layer_of)
    return jax.tree_util.tree_map(lambda b, g: _leaf_apply(structure, b, g), blocks, tree, is_leaf=_is_block)


def clip_groups(structure: str, blocks, layer_of=None):
    """The group of every block array for the inner solver's norm clip, a pytree like ``blocks``.

    The reference clips each of its block arrays separately. Those are ours too, except for
    ``diagonal``: its one vector per controlled layer is our per-leaf ``d`` vectors of that layer,
    which therefore share one group (one clip factor for kernel, bias and norm scales together).
    """
    if structure == "diagonal":
        labels = layer_labels(jax.tree_util.tree_map(lambda b: b["d"], blocks, is_leaf=_is_block), layer_of)
        return jax.tree_util.tree_map(lambda name, b: {"d": name}, labels, blocks)
    leaves, treedef = jax.tree_util.tree_flatten(blocks)
    return jax.tree_util.tree_unflatten(treedef, list(range(len(leaves))))


def clamp_blocks(structure: str, blocks, allow_grad_inversion: bool):
    """Diagonal/scalar entries kept >= 1e-8 so P never flips a gradient component's sign."""
    if structure not in CLAMPED or allow_grad_inversion:
        return blocks
    return jax.tree_util.tree_map(lambda b: jnp.maximum(b, 1e-8), blocks)


def block_stats(blocks) -> dict:
    """max / min over every block entry and the global L2 norm, plus the L2 norm per top-level layer."""
    leaves = jax.tree_util.tree_leaves(blocks)
    stats = {
        "precond_max": float(max(jnp.max(x) for x in leaves)),
        "precond_min": float(min(jnp.min(x) for x in leaves)),
        "precond_l2": float(jnp.sqrt(sum(jnp.sum(x.astype(jnp.float32) ** 2) for x in leaves))),
    }
    if isinstance(blocks, dict):
        for name, layer in blocks.items():
            sq = sum(jnp.sum(x.astype(jnp.float32) ** 2) for x in jax.tree_util.tree_leaves(layer))
            stats[f"precond_l2/{name}"] = float(jnp.sqrt(sq))
    return stats


def _spectral_norm(M, iters: int = 25):
    """Largest singular value by power iteration on MᵀM from the all-ones vector (deterministic)."""
    v = jnp.ones((M.shape[1],), M.dtype) / np.sqrt(M.shape[1])
    for _ in range(iters):
        v = M.T @ (M @ v)
        v = v / (jnp.linalg.norm(v) + 1e-12)
    return jnp.linalg.norm(M @ v)


@jax.jit
def _skew(a):
    skew = a - a.T
    return (jnp.linalg.norm(skew) / (jnp.linalg.norm(a + a.T) + 1e-12),
            _spectral_norm(skew) / (_spectral_norm(a) + 1e-12))


def block_skews(blocks) -> dict:
    """How far P's square block matrices are from symmetric (``measure_asymmetry``), as the
    reference logs it: per matrix ‖S‖_F/‖H‖_F (S, H its skew and symmetric parts) and
    ‖A − Aᵀ‖₂/‖A‖₂; averaged over each top-level layer's matrices and over all of them (0 where
    the structure has none, e.g. diagonal)."""
    out, frob_all, spec_all = {}, [], []
    for name, layer in (blocks.items() if isinstance(blocks, dict) else [("params", blocks)]):
        mats = [a for a in jax.tree_util.tree_leaves(layer) if a.ndim == 2 and a.shape[0] == a.shape[1]]
        if not mats:
            continue
        pairs = [_skew(a) for a in mats]
        frob, spec = [float(f) for f, _ in pairs], [float(s) for _, s in pairs]
        out[f"precond_skew_frob/{name}"] = float(np.mean(frob))
        out[f"precond_skew_spectral/{name}"] = float(np.mean(spec))
        frob_all += frob
        spec_all += spec
    out["precond_skew_frob"] = float(np.mean(frob_all)) if frob_all else 0.0
    out["precond_skew_spectral"] = float(np.mean(spec_all)) if spec_all else 0.0
    return out


# Public aliases for the kernel matrix view and path naming, shared with ``llqr.optim.singd``.
as_matrix_shape = _as_matrix_shape
path_names = _path_names
