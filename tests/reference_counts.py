"""Shared pieces of the model tests: parameter counts of torch layers (the references' models are
counted by hand from their layer lists; torch is not installed) and the classification loss."""

import jax.numpy as jnp


def linear(i, o, bias=True):
    """torch.nn.Linear(i, o)."""
    return i * o + (o if bias else 0)


def conv(cin, cout, k, groups=1, bias=True):
    """torch.nn.Conv2d(cin, cout, k, groups=groups)."""
    return cout * (cin // groups) * k * k + (cout if bias else 0)


def layernorm(c):
    return 2 * c


def xent(logp, y):
    """Mean negative log-likelihood of integer labels under log-probabilities."""
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))
