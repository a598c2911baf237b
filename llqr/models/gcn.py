"""The SINGD study's graph model: Kipf & Welling's two-layer GCN (ICLR 2017) for full-graph node
classification (Cora).

    H = ReLU(Â · dropout(X) W1 + b1),  out = log_softmax(Â · dropout(H) W2 + b2)

as PyTorch Geometric's ``GCNConv`` computes it: the weight is a bias-free linear map applied before
the propagation by the normalised adjacency Â, the bias is added after it. The input row of node i is
[Â_i | x_i] (``llqr.data.cora``): the model splits it at the node count N = x.shape[-2]. W1 and W2
are the Dense layers ``conv1`` and ``conv2`` (the Kronecker capture sees X and H as their inputs, one
row per node); the biases ``conv1_bias``/``conv2_bias`` are separate leaves (after Â, so not a row of
the Dense weight), which SINGD/KFAC pass through unpreconditioned. Glorot-uniform weights, zero
biases (GCNConv's defaults); dropout on the input features and on the hidden layer, as Kipf &
Welling. The study's hidden width and dropout rate are [not retrieved]: Kipf & Welling's Cora
values (16 hidden units, dropout 0.5) are used.

Parameters, F features, K classes, hidden h: (F·h + h) + (h·K + K); Cora (F 1433, K 7, h 16): 23,063.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

HIDDEN = 16
DROPOUT = 0.5


class GCN(nn.Module):
    num_classes: int = 7
    hidden: int = HIDDEN
    dropout_rate: float = DROPOUT

    @nn.compact
    def __call__(self, x, train: bool = False):
        n = x.shape[-2]
        adj, h = x[..., :n], x[..., n:]
        for i, width in enumerate((self.hidden, self.num_classes), start=1):
            h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
            h = nn.Dense(width, use_bias=False, kernel_init=nn.initializers.xavier_uniform(), name=f"conv{i}")(h)
            h = jnp.matmul(adj, h) + self.param(f"conv{i}_bias", nn.initializers.zeros, (width,)).astype(h.dtype)
            if i == 1:
                h = nn.relu(h)
        return nn.log_softmax(h.astype(jnp.float32))
