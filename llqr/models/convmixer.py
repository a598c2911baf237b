"""ConvMixer (Trockman & Kolter, "Patches Are All You Need?"), the SINGD study's ConvMixer.

Configuration: ConvMixer-256/12 with kernel 5 and patch 2, as the SINGD authors' own CIFAR code
(their INGD study's ``convmixer12``: ``dim=256, depth=12, kernel_size=5, patch_size=2``). The
SINGD appendix's own table of model sizes was [not retrieved]: we use that code's configuration.

Layout: patch embedding Conv(patch x patch, stride patch, bias) -> GELU -> BatchNorm; ``depth``
blocks of [x + BN(GELU(depthwise Conv(kernel, groups=dim, 'same' padding, bias)(x)))] ->
pointwise Conv 1x1 (bias) -> GELU -> BN; global average pool; Dense head; log_softmax in float32.
BatchNorm as torch's BatchNorm2d (eps 1e-5, running-average momentum 0.1, i.e. flax 0.9).

Parameters, with D = dim, k = kernel, p = patch, K classes (BN: scale and bias, 2D):
    stem   3·p²·D + D + 2D
    block  (k²·D + D) + 2D + (D² + D) + 2D
    head   D·K + K
D 256, k 5, p 2, depth 12: 3,840 + 12 · 73,472 + 25,700 = 911,204 for CIFAR-100 (888,074 at K 10);
the count does not depend on the image size.

Kronecker capture (SINGD/KFAC/IKFAC, ``llqr.optim.capture``): the patch embedding and the
pointwise convs are plain ``nn.Conv`` layers (A over kh·kw·cin + 1 rows); the depthwise convs
(``feature_group_count`` = D) are captured as the SINGD code treats a grouped Conv2d: A over the
k² taps of the channel-averaged input (+1 for the bias), G over the D output channels. The head is
a Dense layer. BatchNorm scales and biases are not preconditioned (plain gradient).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

BN_MOMENTUM = 0.9  # torch's BatchNorm2d momentum 0.1
BN_EPS = 1e-5


def _gelu(x):
    return nn.gelu(x, approximate=False)  # torch's nn.GELU default (exact erf form)


class ConvMixer(nn.Module):
    """ConvMixer-``dim``/``depth`` (defaults: the study's 256/12, kernel 5, patch 2)."""

    num_classes: int = 100
    dim: int = 256
    depth: int = 12
    kernel: int = 5
    patch: int = 2

    @nn.compact
    def __call__(self, x, train: bool = False):
        def bn(h, name):
            return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS, name=name)(h)

        h = nn.Conv(self.dim, (self.patch, self.patch), strides=(self.patch, self.patch), padding="VALID",
                    name="patch_embed")(x)
        h = bn(_gelu(h), "patch_bn")
        pad = (self.kernel - 1) // 2  # the reference's padding int((k-1)/2)
        for i in range(self.depth):
            r = nn.Conv(self.dim, (self.kernel, self.kernel), padding=((pad, pad), (pad, pad)),
                        feature_group_count=self.dim, name=f"block{i}_depthwise")(h)
            h = h + bn(_gelu(r), f"block{i}_depthwise_bn")
            h = nn.Conv(self.dim, (1, 1), name=f"block{i}_pointwise")(h)
            h = bn(_gelu(h), f"block{i}_pointwise_bn")
        h = jnp.mean(h, axis=(1, 2))
        logits = nn.Dense(self.num_classes, name="head")(h)
        return nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)))
