"""FLOP estimates of scanned models: every scan step counted (XLA's cost analysis counts a loop body once)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from llqr.config import resolve
from llqr.models.lstm_seq2seq import LSTMSeq2Seq
from llqr.workflow.flops import forward_flops, scan_corrected_flops, xla_flops


def lstm_matmul_flops(hidden: int, layers: int, features: int, history: int, horizon: int) -> float:
    """Hand count of the LSTM seq2seq's matrix products per example: per layer and step W_ih·x and W_hh·h
    (2 FLOPs per multiply-add, 4·hidden gate rows), the encoder over the history, the decoder and its
    head over the horizon; the elementwise gate arithmetic is left out (a few % at these widths)."""
    step = sum(2 * 4 * hidden * ((features if layer == 0 else hidden) + hidden) for layer in range(layers))
    return history * step + horizon * (step + 2 * hidden * features)


def test_lstm_seq2seq_flops_count_every_time_step():
    model = LSTMSeq2Seq(hidden=64, layers=2, horizon=4)
    x = jax.ShapeDtypeStruct((1, 5, 1), jnp.float32)
    variables = jax.eval_shape(lambda k, x: model.init(k, x), jax.random.PRNGKey(0), x)
    hand = lstm_matmul_flops(64, 2, 1, history=5, horizon=4)
    counted = scan_corrected_flops(model.apply, variables, x)
    assert hand <= counted <= 1.06 * hand
    assert xla_flops(model.apply, variables, x) < 0.3 * hand  # the plain count: one encoder and one decoder step


def test_the_study_lstm_preset_is_priced_per_step():
    """The study's sizes (hidden 128, 3 layers, horizon 50) at a shorter history: the input follows osc_history."""
    history = 20
    cfg = resolve("lstm-osc-hlr", {"osc_history": history})
    per_example, batch = forward_flops(cfg)
    hand = lstm_matmul_flops(cfg.lstm_hidden, cfg.lstm_layers, 1, history, cfg.osc_horizon)
    assert hand <= per_example <= 1.03 * hand and batch == cfg.batch_size
