"""The reference MLP (flatten -> Dense/ReLU stages -> Dense K -> log_softmax)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp


class MLP(nn.Module):
    hidden: Sequence[int] = (100, 300)
    num_classes: int = 10
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = jnp.reshape(x, (x.shape[0], -1))
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
            if self.dropout_rate:
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.log_softmax(nn.Dense(self.num_classes)(x))
