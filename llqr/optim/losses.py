"""Losses on log-probability outputs (models end in log_softmax), and on float predictions
(``regression_loss``: mse, huber).

Outputs may have extra leading axes (translation: (batch, target length, vocab)); the mean is
over every position whose label is not ``ignore_index`` (the padding id for translation).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _valid(labels, ignore_index):
    if ignore_index is None:
        return jnp.ones(labels.shape, jnp.float32)
    return (labels != ignore_index).astype(jnp.float32)


def _masked_mean(values, mask):
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def smoothed_cross_entropy(log_probs, labels, label_smoothing: float = 0.0, ignore_index: int | None = None,
                           weights=None):
    """Mean CE against (1-ls)*onehot + ls/K, as the reference (ls spread over all K classes).
    ``weights`` (one per example) reweight the terms of the mean: noisy gradient descent."""
    values = smoothed_nll(log_probs, labels, label_smoothing)
    if weights is not None:
        values = values * weights
    return _masked_mean(values, _valid(labels, ignore_index))


def smoothed_nll(log_probs, labels, label_smoothing: float):
    """Per-position CE against (1-ls)*onehot + ls/K: the one formula of the training and test losses."""
    num_classes = log_probs.shape[-1]
    target = jax.nn.one_hot(labels, num_classes) * (1.0 - label_smoothing) + label_smoothing / num_classes
    return -jnp.sum(target * log_probs, axis=-1)


def accuracy_percent(log_probs, labels, ignore_index: int | None = None):
    hits = (jnp.argmax(log_probs, axis=-1) == labels).astype(jnp.float32)
    return 100.0 * _masked_mean(hits, _valid(labels, ignore_index))


def eval_sums(log_probs, labels, ignore_index: int | None = None, label_smoothing: float = 0.0):
    """(summed NLL, correct predictions, counted positions), for exact means over a split; the NLL is
    against the smoothed targets of ``smoothed_cross_entropy`` when ``label_smoothing`` > 0."""
    mask = _valid(labels, ignore_index)
    if label_smoothing:
        nll = smoothed_nll(log_probs, labels, label_smoothing)
    else:
        nll = -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
    hits = (jnp.argmax(log_probs, axis=-1) == labels).astype(jnp.float32)
    return jnp.sum(nll * mask), jnp.sum(hits * mask), jnp.sum(mask)


def _pointwise(name: str, diff):
    """The loss of each prediction error: squared, or Huber's with delta 1 (PyTorch's HuberLoss
    default: quadratic 0.5·d² inside |d| < 1, linear |d| - 0.5 outside)."""
    if name == "mse":
        return diff ** 2
    if name == "huber":
        a = jnp.abs(diff)
        return jnp.where(a < 1.0, 0.5 * diff ** 2, a - 0.5)
    raise ValueError(f"unknown regression loss {name!r}")


def _per_example(name: str, preds, targets):
    """Each example's mean over its target values (axes after the first)."""
    values = _pointwise(name, preds.astype(jnp.float32) - targets.astype(jnp.float32))
    return jnp.mean(values.reshape(values.shape[0], -1), axis=1)


def regression_loss(name: str, preds, targets, weights=None):
    """Mean ``name`` loss over every target value (as PyTorch's reduction='mean'); ``weights`` (one
    per example) reweight the examples' terms."""
    values = _per_example(name, preds, targets)
    return jnp.mean(values if weights is None else values * weights)


def regression_sums(name: str, preds, targets):
    """(summed per-example loss, examples): exact means over a split whose last batch is smaller."""
    values = _per_example(name, preds, targets)
    return jnp.sum(values), jnp.asarray(values.shape[0], jnp.float32)
