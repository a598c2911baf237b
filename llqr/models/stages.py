"""Flat stage networks: the layout shared by the vision models.

A network is an ordered list of *stages* held in ``self.layers``, so Flax names them ``layers_0``,
``layers_1``, ... (as the reference's sequential container). A stage either owns parameters (one
Conv, one BatchNorm or one Dense: a *controlled layer*, i.e. one top-level parameter group that the
LLQR preconditioner treats as a layer) or none (ReLU, pooling, dropout, residual add, log_softmax:
a *passive* stage, absent from ``params``). Stage indices count passive stages too, so the group
names have gaps, like the reference's.

The state passed between stages is an array, or a pair ``(main, skip)`` inside a residual unit.
``route`` says where a stage acts:

- ``"x"``: array in, array out
- ``"fork"``: array in, ``(op(x), x)`` out (the skip keeps the raw input)
- ``"fork_both"``: array in, ``(op(x), op(x))`` out (both branches see the result)
- ``"main"`` / ``"skip"`` / ``"both"``: pair in, the op applied to that branch (or to both)

Every stage is called as ``stage(state, train)``; BatchNorm uses batch statistics and updates
``batch_stats`` when ``train`` and the running averages otherwise; dropout is active only when
``train`` (rng stream ``"dropout"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

ROUTES = ("x", "fork", "fork_both", "main", "skip", "both")


class Stage(nn.Module):
    """Base of every stage: routes ``op`` over the state. ``tag`` is a readable stage name."""

    route: str = "x"
    tag: str = ""

    def op(self, x, train: bool):  # pragma: no cover - abstract
        raise NotImplementedError

    @nn.compact
    def __call__(self, state, train: bool = False):
        route = self.route
        if route == "x":
            return self.op(state, train)
        if route == "fork":
            return self.op(state, train), state
        if route == "fork_both":
            out = self.op(state, train)
            return out, out
        main, skip = state
        if route == "main":
            return self.op(main, train), skip
        if route == "skip":
            return main, self.op(skip, train)
        if route == "both":
            # one op applied twice would share parameters; only passive stages may use "both"
            return self.op(main, train), self.op(skip, train)
        raise ValueError(f"unknown route {route!r}; expected one of {ROUTES}")


class Conv(Stage):
    features: int = 0
    kernel: int = 3
    stride: int = 1
    padding: str = "SAME"
    use_bias: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def op(self, x, train):
        return nn.Conv(self.features, (self.kernel, self.kernel), strides=(self.stride, self.stride),
                       padding=self.padding, use_bias=self.use_bias, dtype=self.dtype,
                       param_dtype=self.param_dtype)(x)


class BatchNorm(Stage):
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def op(self, x, train):
        return nn.BatchNorm(use_running_average=not train, momentum=self.momentum, epsilon=self.epsilon,
                            dtype=self.dtype, param_dtype=self.param_dtype)(x)


class Dense(Stage):
    features: int = 0
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def op(self, x, train):
        return nn.Dense(self.features, dtype=self.dtype, param_dtype=self.param_dtype)(x)


class Relu(Stage):
    def op(self, x, train):
        return nn.relu(x)


class Dropout(Stage):
    rate: float = 0.0

    def op(self, x, train):
        if not self.rate:
            return x
        return nn.Dropout(self.rate, deterministic=not train)(x)


class MaxPool(Stage):
    window: int = 2
    stride: int = 2
    padding: str = "VALID"

    def op(self, x, train):
        return nn.max_pool(x, (self.window, self.window), strides=(self.stride, self.stride), padding=self.padding)


class AvgPool(Stage):
    window: int = 2
    stride: int = 2

    def op(self, x, train):
        return nn.avg_pool(x, (self.window, self.window), strides=(self.stride, self.stride), padding="VALID")


class ChannelPad(Stage):
    """Zero channels appended (PyramidNet's parameter-free shortcut)."""

    extra: int = 0

    def op(self, x, train):
        if not self.extra:
            return x
        return jnp.pad(x, ((0, 0),) * (x.ndim - 1) + ((0, self.extra),))


class GlobalAvgPool(Stage):
    def op(self, x, train):
        return jnp.mean(x, axis=(-3, -2))


class Flatten(Stage):
    def op(self, x, train):
        return jnp.reshape(x, (x.shape[0], -1))


class Add(Stage):
    """Pair in, ``main + skip`` out (then ReLU if ``relu``); ends a residual unit."""

    relu: bool = False

    @nn.compact
    def __call__(self, state, train: bool = False):
        main, skip = state
        out = main + skip
        return nn.relu(out) if self.relu else out


class LogSoftmax(Stage):
    """Log-probabilities, computed in at least float32."""

    def op(self, x, train):
        return nn.log_softmax(x.astype(jnp.promote_types(x.dtype, jnp.float32)))


class StageNet(nn.Module):
    """A flat list of stages; subclasses return it from ``stages()``.

    ``__call__(x, train)`` maps NHWC images to (N, K) log-probabilities.
    """

    @nn.nowrap
    def stages(self) -> Sequence[Stage]:  # pragma: no cover - abstract
        raise NotImplementedError

    def setup(self):
        self.layers = list(self.stages())

    def __call__(self, x, train: bool = False):
        for layer in self.layers:
            x = layer(x, train)
        return x


def layer_tags(model: StageNet) -> dict[str, str]:
    """``{"layers_i": tag}`` for every controlled stage (one that owns parameters), in order."""
    out = {}
    for i, stage in enumerate(model.stages()):
        if isinstance(stage, (Conv, BatchNorm, Dense)):
            out[f"layers_{i}"] = stage.tag or type(stage).__name__
    return out


class Builder:
    """Collects stages for ``StageNet.stages``; carries the dtypes into every parametrised stage."""

    def __init__(self, dtype=None, param_dtype=jnp.float32):
        self.items: list[Stage] = []
        self.dtype, self.param_dtype = dtype, param_dtype

    def add(self, stage: Stage) -> Builder:
        self.items.append(stage)
        return self

    def conv(self, tag, features, kernel=3, stride=1, *, route="x", padding="SAME", use_bias=False):
        return self.add(Conv(route=route, tag=tag, features=features, kernel=kernel, stride=stride, padding=padding,
                             use_bias=use_bias, dtype=self.dtype, param_dtype=self.param_dtype))

    def bn(self, tag, momentum, *, route="x", epsilon=1e-5):
        return self.add(BatchNorm(route=route, tag=tag, momentum=momentum, epsilon=epsilon, dtype=self.dtype,
                                  param_dtype=self.param_dtype))

    def dense(self, tag, features):
        return self.add(Dense(tag=tag, features=features, dtype=self.dtype, param_dtype=self.param_dtype))
