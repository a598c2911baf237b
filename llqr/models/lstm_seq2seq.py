"""The HyperbolicLR study's LSTM sequence-to-sequence forecaster (ours, after Kim 2024's LSTM_Seq2Seq).

An encoder LSTM (``layers`` stacked layers of ``hidden`` units) reads the history (B, T, F) and
hands its final (h, c) of every layer to a decoder LSTM of the same shape, which then runs
``horizon`` steps autoregressively: its first input is zeros, each later input is its own previous
prediction (no teacher forcing, in training too), and a linear head maps each step's top hidden
state to the F features predicted. Output (B, horizon, F): the targets' shape, no softmax.

Each layer follows PyTorch's LSTM: gates i, f, g, o from W_ih·x + b_ih + W_hh·h + b_hh (two bias
vectors), c' = σ(f)·c + σ(i)·tanh(g), h' = σ(o)·tanh(c'); weights and biases are drawn from
U(-1/√hidden, 1/√hidden) as PyTorch's LSTM does, the head's from U(-1/√hidden, 1/√hidden) as its
Linear does. A layer has 4·hidden·(in + hidden) + 8·hidden parameters (in = F for the first layer,
hidden for the others); the study's model (F = 1, hidden 128, 3 layers) has 331,264 per LSTM and
662,657 with the head.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def _uniform(bound: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class LSTMCell(nn.Module):
    """One step of one PyTorch-layout LSTM layer: (h, c), x -> (h', c'), h'."""

    hidden: int

    @nn.compact
    def __call__(self, carry, x):
        h, c = carry
        init = _uniform(1.0 / math.sqrt(self.hidden))
        gates = (nn.Dense(4 * self.hidden, kernel_init=init, bias_init=init, name="ih")(x)
                 + nn.Dense(4 * self.hidden, kernel_init=init, bias_init=init, name="hh")(h))
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = nn.sigmoid(f) * c + nn.sigmoid(i) * jnp.tanh(g)
        h = nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h


class StackedLSTM(nn.Module):
    """One time step through ``layers`` LSTM layers; carry: one (h, c) per layer."""

    hidden: int
    layers: int

    @nn.compact
    def __call__(self, carry, x):
        states = []
        for index in range(self.layers):
            state, x = LSTMCell(self.hidden, name=f"layer{index}")(carry[index], x)
            states.append(state)
        return tuple(states), x


class DecoderStep(nn.Module):
    """One decoder step: the stacked LSTM on the previous prediction, then the linear head."""

    hidden: int
    layers: int
    features: int

    @nn.compact
    def __call__(self, carry):
        states, previous = carry
        states, top = StackedLSTM(self.hidden, self.layers, name="lstm")(states, previous)
        init = _uniform(1.0 / math.sqrt(self.hidden))
        prediction = nn.Dense(self.features, kernel_init=init, bias_init=init, name="head")(top)
        return (states, prediction), prediction


class LSTMSeq2Seq(nn.Module):
    hidden: int = 128
    layers: int = 3
    horizon: int = 50

    @nn.compact
    def __call__(self, x, train: bool = False):
        batch, _, features = x.shape
        zeros = jnp.zeros((batch, self.hidden), x.dtype)
        states = tuple((zeros, zeros) for _ in range(self.layers))
        encoder = nn.scan(StackedLSTM, variable_broadcast="params", split_rngs={"params": False},
                          in_axes=1, out_axes=1)
        states, _ = encoder(self.hidden, self.layers, name="encoder")(states, x)
        decoder = nn.scan(DecoderStep, variable_broadcast="params", split_rngs={"params": False},
                          out_axes=1, length=self.horizon)
        _, predictions = decoder(self.hidden, self.layers, features, name="decoder")(
            (states, jnp.zeros((batch, features), x.dtype)))
        return predictions
