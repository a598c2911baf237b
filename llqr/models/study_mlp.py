"""MLPs for the SVAG / scale-invariance demos.

``ScaleInvariantMLP``: flatten -> [Dense (no bias) -> LayerNorm without scale and bias -> ReLU]
per hidden width -> a fixed linear layer to K (no bias) -> log_softmax. LayerNorm normalises each
example's pre-activation vector, so the output is invariant to scaling any hidden kernel by c > 0
(up to LayerNorm's eps = 1e-5); the hidden Dense layers have no bias because a bias would have to
be scaled with its kernel. The last layer is the constant ``preresnet.fixed_head(width, K,
head_seed)`` applied through ``stop_gradient``: not a parameter, never trained or decayed.
Parameters: the hidden kernels only, Σ fan_in·width (``Dense_i`` groups; the LayerNorms own none).

The plain MLP with configurable widths is ``llqr.models.mlp.MLP`` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from .mlp import MLP
from .preresnet import EPSILON, fixed_head, fixed_linear

__all__ = ["MLP", "ScaleInvariantMLP"]


class ScaleInvariantMLP(nn.Module):
    hidden: Sequence[int] = (100, 300)
    num_classes: int = 10
    head_seed: int = 0
    epsilon: float = EPSILON

    @nn.compact
    def __call__(self, x, train: bool = False):
        if not self.hidden:
            raise ValueError("ScaleInvariantMLP needs at least one hidden layer (the head is fixed)")
        x = jnp.reshape(x, (x.shape[0], -1))
        for width in self.hidden:
            x = nn.Dense(width, use_bias=False)(x)
            x = nn.relu(nn.LayerNorm(epsilon=self.epsilon, use_scale=False, use_bias=False)(x))
        logits = fixed_linear(x, fixed_head(x.shape[-1], self.num_classes, self.head_seed))
        return nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)))
