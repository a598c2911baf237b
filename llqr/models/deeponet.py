"""The HyperbolicLR study's DeepONet (Kim 2024, after Lu et al. 2021) for the integral operator.

Input x (N, 2, Q): row 0 the sensor values u (Q of them), row 1 the query points y. The branch
net maps u to p coefficients, the trunk net maps each query point alone to p basis values, and
G(u)(y_j) = Σ_k branch_k(u) · trunk_k(y_j) + b, one output per query point: (N, Q) in float32.

Both nets are the study's ``create_net``: Linear layers [in] + [hidden] × (layers − 1) + [p] with
exact (erf) GELU between them and none after the last; the study's defaults hidden 1024, layers 6,
p 50. b is one scalar drawn N(0, 1) (``torch.randn(1)``) and trained. PyTorch's Linear init:
weights and biases U(−1/√fan_in, 1/√fan_in).

Parameters (S sensors, H hidden, L layers, p): branch S·H + H + (L−2)(H² + H) + H·p + p, trunk the
same with 1 input, plus b. At the study's S 100, H 1024, L 6, p 50: 4,353,074 + 4,251,698 + 1 =
8,604,773. (In the study's code ``nn.Parameter(...).to(device)`` is a plain tensor once the device
is a GPU, so its GPU runs keep b at its random draw; here b is trained, as on its CPU.)
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def torch_uniform(bound: float):
    """U(−bound, bound), PyTorch's Linear init with bound 1/√fan_in."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_dense(features: int, fan_in: int, name: str | None = None, kernel_bound: float | None = None,
                bias_init=None) -> nn.Dense:
    """nn.Linear(fan_in, features) with PyTorch's default init (or the given kernel bound / bias init)."""
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Dense(features, kernel_init=torch_uniform(bound if kernel_bound is None else kernel_bound),
                    bias_init=bias_init or torch_uniform(bound), name=name)


class GeluNet(nn.Module):
    """The study's create_net: Linear layers of ``sizes[1:]`` from width ``sizes[0]``, GELU between."""

    sizes: tuple[int, ...]

    @nn.compact
    def __call__(self, x):
        for i, (fan_in, width) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
            x = torch_dense(width, fan_in, name=f"linear_{i}")(x)
            if i < len(self.sizes) - 2:
                x = nn.gelu(x, approximate=False)
        return x


class DeepONet(nn.Module):
    hidden: int = 1024
    layers: int = 6
    basis: int = 50

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = jnp.asarray(x, jnp.float32)
        u, y = x[:, 0, :], x[:, 1, :]
        widths = (self.hidden,) * (self.layers - 1) + (self.basis,)
        coefficients = GeluNet((u.shape[-1], *widths), name="branch")(u)  # (N, p)
        basis = GeluNet((1, *widths), name="trunk")(y[..., None])  # (N, Q, p): each query point alone
        bias = self.param("bias", nn.initializers.normal(1.0), (1,))
        return jnp.einsum("np,nqp->nq", coefficients, basis) + bias
