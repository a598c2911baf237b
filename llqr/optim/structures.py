"""Block structures of the preconditioner P: per-leaf parameters, their identity init and action.

P is block-diagonal over parameter leaves. A kernel leaf is viewed as a matrix X (m x n): Dense
(in, out), Conv (kh*kw*cin, cout), attention query/key/value (emb, heads*head_dim), anything else
of rank >= 2 (attention out, embeddings) as (prod(leading), last). Leaves of rank < 2 (biases,
norm scales) get a diagonal vector in every family. ``scalar`` and ``dense`` act on a whole
top-level layer (the reference's "controlled layer"). Applying the identity init returns g exactly
(``kfac``: s*g, the reference's quirk, which the runner then divides by s).

``exact`` is ours, not the reference's: one matrix over all parameters, set at each fit to the
exact (H_D + λI)^-1 by a dense solve (``llqr.optim.exact``) instead of being fitted; it is the
"exact vs relaxed" yardstick and is refused above ``EXACT_MAX_PARAMS`` parameters.
"""

from __future__ import annotations

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

FAMILIES = ("scalar", "diagonal", "dense", "kfac", "diag-kfac", "e-kfac", "sep-e-kfac", "psd-e-kfac",
            "psd-sep-e-kfac", "exact")
CLAMPED = ("scalar", "diagonal")  # clamped at >= 1e-8 unless allow_grad_inversion
PSD_EPS = 1e-8
EXACT_MAX_PARAMS = 4096  # the dense curvature and its inverse: 2 x 64 MiB in float32
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
        return {"a": jnp.full((m,), s, jnp.float32), "b": jnp.ones((n,), jnp.float32)}
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
        Y = block["QA"] @ (d * (block["QA"].T @ X @ block["QG"])) @ block["QG"].T
    elif structure in ("sep-e-kfac", "psd-sep-e-kfac"):
        a, gg = (block["a"], block["g"]) if "a" in block else (block["ra"] ** 2 + PSD_EPS, block["rg"] ** 2 + PSD_EPS)
        left = (block["QA"] * a[None, :]) @ block["QA"].T
        right = (block["QG"] * gg[None, :]) @ block["QG"].T
        Y = left @ X @ right
    else:
        raise ValueError(f"unknown block structure {structure!r}")
    return Y.reshape(g.shape)


def _layers(params) -> dict:
    """Top-level groups (the reference's controlled layers); a bare array is one layer."""
    return params if isinstance(params, dict) else {"params": params}


def num_params(params) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))


def init_blocks(structure: str, params, scale: float = 1.0):
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
    if structure == "scalar":
        return {k: jnp.asarray(scale, jnp.result_type(*jax.tree_util.tree_leaves(v))) for k, v in _layers(params).items()}
    if structure == "dense":
        out = {}
        for k, layer in _layers(params).items():
            out[k] = _eye(num_params(layer), scale, jnp.result_type(*jax.tree_util.tree_leaves(layer)))
        return out
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: jax.tree_util.tree_map(lambda b: b.astype(leaf.dtype),
                                                  _leaf_init(structure, leaf, scale, path)), params)


def apply_blocks(structure: str, blocks, tree):
    """P @ tree (undivided by the identity scaling)."""
    if structure == "exact":
        flat, unravel = jax.flatten_util.ravel_pytree(tree)
        return unravel(blocks["P"] @ flat)
    if structure == "scalar":
        layers = _layers(tree)
        out = {k: jax.tree_util.tree_map(lambda x, k=k: blocks[k] * x, v) for k, v in layers.items()}
        return out if isinstance(tree, dict) else out["params"]
    if structure == "dense":
        layers = _layers(tree)
        out = {}
        for k, layer in layers.items():
            flat, unravel = jax.flatten_util.ravel_pytree(layer)
            out[k] = unravel(blocks[k] @ flat)
        return out if isinstance(tree, dict) else out["params"]
    is_block = lambda x: isinstance(x, dict) and all(not isinstance(v, dict) for v in x.values())  # noqa: E731
    return jax.tree_util.tree_map(lambda b, g: _leaf_apply(structure, b, g), blocks, tree, is_leaf=is_block)


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


# Public aliases for the kernel matrix view and path naming, shared with ``llqr.optim.singd``.
as_matrix_shape = _as_matrix_shape
path_names = _path_names
