"""LLQR as an optax transformation: apply the current blocks of P to the incoming gradient.

The blocks are fitted elsewhere (``llqr.optim.fit``, a pure jitted function of the fit batch)
and swapped into the state with ``set_blocks``; ``update`` itself is a cheap structured matvec.
Chain it before the main optimizer: ``optax.chain(scale_by_llqr(...), add_decayed_weights, sgd)``,
so momentum and weight decay act on P g as in the reference.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from .structures import apply_blocks, init_blocks


class LLQRState(NamedTuple):
    blocks: Any
    fits: jnp.ndarray  # how many fitted blocks have been swapped in


def precondition(structure: str, blocks, tree, identity_scale: float = 1.0, layer_of=None):
    """P·tree as applied in training: the block product divided by the identity scaling s."""
    out = apply_blocks(structure, blocks, tree, layer_of)
    return out if identity_scale == 1.0 else jax.tree_util.tree_map(lambda x: x / identity_scale, out)


def scale_by_llqr(structure: str = "diagonal", identity_scale: float = 1.0,
                  layer_of=None) -> optax.GradientTransformation:
    """``layer_of``: each parameter's controlled layer, where not its top-level group
    (``llqr.optim.structures.layer_labels``)."""

    def init(params):
        return LLQRState(init_blocks(structure, params, identity_scale, layer_of), jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        del params
        return precondition(structure, state.blocks, updates, identity_scale, layer_of), state

    return optax.GradientTransformation(init, update)


def _is_llqr(x) -> bool:
    return isinstance(x, LLQRState)


def get_blocks(opt_state):
    found = [s for s in jax.tree_util.tree_leaves(opt_state, is_leaf=_is_llqr) if _is_llqr(s)]
    if len(found) != 1:
        raise ValueError(f"expected exactly one LLQRState in the optimizer state, found {len(found)}")
    return found[0].blocks


def set_blocks(opt_state, blocks):
    """The optimizer state with the LLQR blocks replaced (and the fit counter advanced)."""
    return jax.tree_util.tree_map(
        lambda s: s._replace(blocks=blocks, fits=s.fits + 1) if _is_llqr(s) else s, opt_state, is_leaf=_is_llqr
    )
