"""Multi-head self-attention with the reference's fused q/k/v projection, as plain ``nn.Dense``
layers so that the Kronecker capture (``llqr.optim.capture``, which intercepts ``nn.Dense`` and
``nn.Conv``) sees them; Flax's ``MultiHeadDotProductAttention`` uses ``DenseGeneral``, which it
does not.

``qkv``: one Dense (D -> 3D), as timm's / the references' ``nn.Linear(dim, 3*dim)``: SINGD's
torch code treats that Linear as one layer, so it is one Kronecker-factored layer here too (A over
D + bias inputs, G over all 3D outputs). ``proj``: the output Dense (D -> D, bias).

``bias``: an additive term on the attention logits before the softmax (the window transformers'
relative position bias and shift mask, ``llqr.models.swin`` / ``gcvit``); it sits between the two
Dense layers, so neither layer's capture changes. ``attend`` is the shared head math.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


def attend(q, k, v, bias=None):
    """softmax(q kᵀ / √hd + bias) v over (B, H, N, hd) heads -> (B, N, H·hd); the softmax in
    float32 at least. ``bias`` broadcasts against the (B, H, N, N) logits."""
    b, _, n, hd = q.shape
    att = jnp.einsum("bhqd,bhkd->bhqk", q, k) * jnp.asarray(hd ** -0.5, q.dtype)
    att = att.astype(jnp.promote_types(att.dtype, jnp.float32))
    if bias is not None:
        att = att + bias.astype(att.dtype)
    att = nn.softmax(att, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bhkd->bqhd", att, v).reshape(b, n, -1)


class FusedSelfAttention(nn.Module):
    """(B, N, D) -> (B, N, D); ``heads`` divides D; scale head_dim^-0.5; optional logit ``bias``."""

    heads: int
    qkv_bias: bool = False
    kernel_init: nn.initializers.Initializer = nn.initializers.truncated_normal(0.02)

    @nn.compact
    def __call__(self, x, bias=None):
        b, n, d = x.shape
        hd = d // self.heads
        qkv = nn.Dense(3 * d, use_bias=self.qkv_bias, kernel_init=self.kernel_init, name="qkv")(x)
        qkv = qkv.reshape(b, n, 3, self.heads, hd).transpose(2, 0, 3, 1, 4)  # (3, B, H, N, hd)
        out = attend(qkv[0], qkv[1], qkv[2], bias)
        return nn.Dense(d, kernel_init=self.kernel_init, name="proj")(out)
