"""The SVAG study's PreResNet-32 (its ``preresnet`` with ``homo=True``, ``bn_affine=False``,
``fix_last_layer=True``), at width 1 or 4 ("PRN32-4x", ``widen_factor=4``), BN, GN or no norm.

Layout (w = ``width``, n = 5 blocks per stage, widths 16w, 32w, 64w, stride 2 entering stages 2
and 3): stem conv3x3 3->16w (no norm after it); in each block

    out = conv2(relu(norm2(conv1(relu(norm1(x)))))) + skip

where skip = x, except in the first block of *every* stage (stage 1 too: ``homo``), where it is
conv1x1(norm(x)) with the block's stride; then norm -> global average pool -> the frozen linear
layer (N(0, 2/fan_in) kernel, zero bias) -> log_softmax. There is no ReLU before the pool (the
study defines one but its forward does not call it).

Why it differs from ``preresnet.PreResNet(scale_invariant=True)`` (which normalises after every
conv so each kernel is invariant on its own): the study's net is invariant to a joint positive
scale of all its trainable kernels (its ``sc_test``), and each stage's kernels are jointly
invariant (every stage starts with norms of its input and the net ends with one); the stem conv
and every block's conv1 are invariant on their own, since only norms read them. With
``norm="none"`` (the study's ``'None'``: ``nn.Identity``) none of this holds.

Norms, convs and the head are ``svag_layers``' (eps 0, GroupNorm(8), He-normal fan-in init).
Parameters: 464,048 trainable at width 1 and 7,419,584 at width 4, plus the frozen 64w·K + K.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from .stages import Add, Builder, GlobalAvgPool, LogSoftmax, Relu, StageNet
from .svag_layers import NORMS, FrozenLinear, add_study_conv, add_study_norm, frozen_head

STAGE_WIDTHS = (16, 32, 64)


def study_block(b: Builder, prefix: str, features: int, stride: int, *, norm: str, project: bool) -> None:
    """One pre-activation basic block; ``project``: the skip is conv1x1(norm(x)) (``homo``)."""
    add_study_norm(b, f"{prefix}_norm1", norm, route="fork")
    if norm == "none":  # the fork is the norm's job; without one, fork explicitly
        b.add(Relu(route="fork"))
    else:
        b.add(Relu(route="main"))
    add_study_conv(b, f"{prefix}_conv1", features, 3, stride, route="main")
    add_study_norm(b, f"{prefix}_norm2", norm, route="main")
    b.add(Relu(route="main"))
    add_study_conv(b, f"{prefix}_conv2", features, 3, 1, route="main")
    if project:
        add_study_norm(b, f"{prefix}_skip_norm", norm, route="skip")
        add_study_conv(b, f"{prefix}_skip_conv", features, 1, stride, route="skip")
    b.add(Add())


class SvagPreResNet(StageNet):
    """The study's PreResNet-(6·blocks+2); defaults: PreResNet-32, BatchNorm, width 1."""

    num_classes: int = 10
    width: int = 1
    blocks: int = 5
    norm: str = "bn"
    head_seed: int = 0
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.nowrap
    def stages(self):
        if self.norm not in NORMS:
            raise ValueError(f"SvagPreResNet norm {self.norm!r}; expected one of {NORMS}")
        b = Builder(self.dtype, self.param_dtype)
        widths = [w * self.width for w in STAGE_WIDTHS]
        add_study_conv(b, "stem_conv", widths[0], 3, 1)
        for s, features in enumerate(widths):
            for j in range(self.blocks):
                study_block(b, f"stage_{s}_block_{j}", features, 2 if s > 0 and j == 0 else 1, norm=self.norm,
                            project=j == 0)
        add_study_norm(b, "final_norm", self.norm)
        b.add(GlobalAvgPool())
        b.add(FrozenLinear(tag="frozen_logits", features=self.num_classes, seed=self.head_seed))
        b.add(LogSoftmax())
        return b.items

    @nn.nowrap
    def frozen_arrays(self):
        """The constants of the frozen last layer (kernel, bias): the study's non-trainable fc."""
        return frozen_head(STAGE_WIDTHS[-1] * self.width, self.num_classes, self.head_seed)
