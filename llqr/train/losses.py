"""Losses on log-probability outputs (models end in log_softmax)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def smoothed_cross_entropy(log_probs, labels, label_smoothing: float = 0.0):
    """Mean CE against (1-ls)*onehot + ls/K, as the reference (ls spread over all K classes)."""
    num_classes = log_probs.shape[-1]
    target = jax.nn.one_hot(labels, num_classes) * (1.0 - label_smoothing) + label_smoothing / num_classes
    return -jnp.mean(jnp.sum(target * log_probs, axis=-1))


def accuracy_percent(log_probs, labels):
    return 100.0 * jnp.mean(jnp.argmax(log_probs, axis=-1) == labels)
