"""Stages in the form of the SVAG study's PyTorch layers (Li, Malladi & Arora 2021), for
``svag_preresnet``, ``svag_vgg`` and ``resnet32``.

Why separate from ``preresnet.Norm`` / ``FixedDense``: the study's scale-invariant nets differ in
details that change the dynamics SVAG is compared on, not only the parameter count:

- norms have **eps = 0** and no affine parameters (exact scale invariance), GroupNorm has **8
  groups** at every width, BatchNorm follows PyTorch's momentum 0.1 (Flax 0.9); variances are
  computed in two passes (``use_fast_variance=False``), as PyTorch does, since eps = 0 leaves no
  floor under a cancelled E[x²]−E[x]²;
- convs are initialised N(0, 2/fan_in) (the study's ``reset_parameters``), or N(0, 2/fan_out)
  in the plain ResNet (its own init loop), and pad symmetrically (PyTorch ``padding=1``; Flax's
  "SAME" pads a stride-2 conv on one side only);
- the frozen last layer (``fix_last_layer``) is N(0, 2/fan_in) with a zero bias, both excluded
  from training: here constants applied through ``stop_gradient``, not ``params``.

Differences left: BatchNorm's running variance is Flax's biased one (PyTorch keeps the unbiased
one); it only matters in eval mode.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .stages import Stage

NORMS = ("bn", "gn", "none")
GN_GROUPS = 8  # the study's norm2d: nn.GroupNorm(8, C)
BN_MOMENTUM = 0.9  # PyTorch momentum 0.1
STUDY_EPS = 0.0  # the study's module-level eps = 0 in every norm2d call


def he_normal(mode: str):
    """N(0, 2/fan) with fan = kh·kw·C_in ("fan_in", the study's ``reset_parameters``) or
    kh·kw·C_out ("fan_out", the plain ResNet's init loop); not truncated."""
    return jax.nn.initializers.variance_scaling(2.0, mode, "normal")


def torch_linear_bias(fan_in: int):
    """PyTorch's default nn.Linear bias init: U(−1/√fan_in, 1/√fan_in)."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class StudyConv(Stage):
    """Bias-free (unless ``use_bias``) k×k conv with PyTorch's symmetric padding k//2."""

    features: int = 0
    kernel: int = 3
    stride: int = 1
    use_bias: bool = False
    init_mode: str = "fan_in"
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def op(self, x, train):
        pad = self.kernel // 2
        return nn.Conv(self.features, (self.kernel, self.kernel), strides=(self.stride, self.stride),
                       padding=((pad, pad), (pad, pad)), use_bias=self.use_bias, kernel_init=he_normal(self.init_mode),
                       dtype=self.dtype, param_dtype=self.param_dtype)(x)


class StudyNorm(Stage):
    """The study's ``norm2d``: BatchNorm or GroupNorm(8) with eps 0 and (by default) no affine
    parameters, so the output is exactly invariant to a positive scale of its input."""

    kind: str = "bn"
    affine: bool = False
    epsilon: float = STUDY_EPS
    groups: int = GN_GROUPS
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def op(self, x, train):
        common = dict(epsilon=self.epsilon, use_scale=self.affine, use_bias=self.affine, use_fast_variance=False,
                      dtype=self.dtype, param_dtype=self.param_dtype)
        if self.kind == "bn":
            return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, **common)(x)
        if self.kind == "gn":
            return nn.GroupNorm(num_groups=self.groups, **common)(x)
        raise ValueError(f"unknown norm {self.kind!r}; expected 'bn' or 'gn' ('none' adds no stage)")


def frozen_head(fan_in: int, features: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The study's fixed last layer: kernel N(0, 2/fan_in) (numpy generator ``seed``, float32,
    shape (fan_in, features)) and its zero bias; the same arrays on every call."""
    rng = np.random.default_rng(seed)
    kernel = (rng.standard_normal((fan_in, features)) * math.sqrt(2.0 / fan_in)).astype(np.float32)
    return kernel, np.zeros((features,), np.float32)


class FrozenLinear(Stage):
    """x @ W + b with (W, b) = ``frozen_head``: constants no optimizer or weight decay can move."""

    features: int = 0
    seed: int = 0

    def op(self, x, train):
        kernel, bias = frozen_head(x.shape[-1], self.features, self.seed)
        kernel, bias = (jax.lax.stop_gradient(jnp.asarray(a, x.dtype)) for a in (kernel, bias))
        return x @ kernel + bias


class TorchDense(Stage):
    """A trainable nn.Linear with PyTorch's default init (kernel and bias U(±1/√fan_in))."""

    features: int = 0
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def op(self, x, train):
        fan_in = x.shape[-1]
        return nn.Dense(self.features, kernel_init=jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
                        bias_init=torch_linear_bias(fan_in), dtype=self.dtype, param_dtype=self.param_dtype)(x)


def add_study_norm(b, tag: str, kind: str, *, route: str = "x") -> None:
    """Append the study's affine-free norm of ``kind`` to builder ``b`` ("none": nothing, the
    study's ``nn.Identity``)."""
    if kind != "none":
        b.add(StudyNorm(route=route, tag=tag, kind=kind, dtype=b.dtype, param_dtype=b.param_dtype))


def add_study_conv(b, tag: str, features: int, kernel: int = 3, stride: int = 1, *, route: str = "x",
                   init_mode: str = "fan_in") -> None:
    """Append a bias-free ``StudyConv`` to builder ``b``."""
    b.add(StudyConv(route=route, tag=tag, features=features, kernel=kernel, stride=stride, init_mode=init_mode,
                    dtype=b.dtype, param_dtype=b.param_dtype))
