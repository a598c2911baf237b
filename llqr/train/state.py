"""The typed train state: what one step reads and writes, and what a checkpoint holds."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from ..optim import sam


@struct.dataclass
class TrainState:
    params: Any
    batch_stats: Any  # BatchNorm running statistics; {} for models without BN
    opt_state: Any  # the configured optax chain's state (LLQR blocks and Kronecker factors included)
    dropout_key: jax.Array
    sam: Any = None  # SAM's running buffers (None without a SAM mode), so checkpoints carry them

    def variables(self) -> dict:
        return {"params": self.params, **({"batch_stats": self.batch_stats} if self.batch_stats else {})}

    def as_tree(self) -> dict:
        """The checkpoint layout: a plain dict, the same as before the state was typed, so a
        checkpoint written by an older runner still restores."""
        tree = {"params": self.params, "batch_stats": self.batch_stats, "opt_state": self.opt_state,
                "dropout_key": self.dropout_key}
        return tree if self.sam is None else {**tree, "sam": self.sam}

    @classmethod
    def from_tree(cls, tree: dict) -> TrainState:
        return cls(**tree)


def init_state(model, tx, cfg, sample_input) -> TrainState:
    """Parameters from ``init_key``, the optimizer state, the dropout key from ``rng_seed``."""
    # one compiled init: eager init compiles every initializer's random draw separately (minutes for a CNN on CPU)
    init = jax.jit(model.init, static_argnames="train")
    variables = init(jax.random.PRNGKey(cfg.init_key), sample_input, train=False)
    params = variables["params"]
    if cfg.precision == "bf16":  # params (hence activations and optimizer state) in bfloat16
        params = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), params)
    return TrainState(
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        # one buffer per leaf: an init may reuse an array in two places, and the step donates its state
        opt_state=jax.tree_util.tree_map(jnp.copy, tx.init(params)),
        dropout_key=jax.random.PRNGKey(cfg.rng_seed),
        sam=sam.init_buffers(cfg.sam_mode, params) if cfg.sam_mode is not None else None,
    )
