"""The HyperbolicLR study's oscillation task: the generator's equations, the windows and split, the
regression losses, the LSTM seq2seq's size, the config's refusals and a tiny run of the preset."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llqr.config import ConfigError
from llqr.config.presets import resolve
from llqr.data import oscillation as osc


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("osc")
    osc.prepare(folder / "oscillation.npz")
    return folder


def test_first_newmark_steps_by_hand():
    """Step 1 solved by hand from m a1 + c v1 + k x1 = 0 with v1, x1 of the average-acceleration rule."""
    data = osc.trajectories()
    dt, k, x0, a0 = 1e-3, 200.0, 0.1, -20.0
    assert data["t"].size == 10_001 and data["t"][-1] == pytest.approx(10.0)
    assert a0 == -k * x0  # the study's a(0) is the equation of motion's at rest
    for row, zeta in enumerate(osc.ZETAS):
        c = 2 * math.sqrt(k) * zeta
        a1 = -(k * x0 + 0.25 * k * dt**2 * a0 + 0.5 * c * dt * a0) / (1 + 0.5 * c * dt + 0.25 * k * dt**2)
        v1 = 0.5 * dt * (a0 + a1)
        x1 = x0 + 0.25 * dt**2 * (a0 + a1)
        assert (data["x"][row, 1], data["v"][row, 1], data["a"][row, 1]) == pytest.approx((x1, v1, a1), rel=1e-12)
        assert 1 * data["a"][row, 1] + c * data["v"][row, 1] + k * data["x"][row, 1] == pytest.approx(0, abs=1e-12)
    assert data["x"][0, 1] == pytest.approx(0.1 - 9.9995e-6, rel=1e-9)


def test_undamped_energy_is_conserved_and_damping_drains_it():
    """Newmark's average-acceleration rule conserves a linear oscillator's energy exactly."""
    data = osc.trajectories()
    energy = 0.5 * data["v"] ** 2 + 0.5 * 200.0 * data["x"] ** 2
    assert np.allclose(energy[0], energy[0, 0], rtol=1e-9)
    assert energy[1, -1] < energy[1, 0] and energy[2, -1] < energy[1, -1]
    assert np.all(np.diff(energy[2]) <= 1e-15)


def test_windows_split_and_normalisation(prepared):
    simple = osc.load(prepared, "simple")
    assert (simple.train_size, simple.test_size) == (7921, 1981)  # int(0.8 * 9902) windows of 10,001 - 99
    assert osc.train_count() == simple.train_size
    assert simple.x_train.shape[1:] == (50, 1) and simple.y_train.shape[1:] == (50, 1)
    assert simple.task == "regression" and simple.x_train.dtype == np.float32
    every = np.concatenate([simple.x_train, simple.x_test])
    assert every.min() == 0.0 and every.max() == 1.0
    raw = osc.trajectories()["x"][0]
    expected = (raw - raw.min()) / (raw.max() - raw.min())
    train, _ = osc.split(9902)
    i = int(train[5])
    assert np.allclose(simple.x_train[5, :, 0], expected[i:i + 50], atol=1e-7)
    assert np.allclose(simple.y_train[5, :, 0], expected[i + 50:i + 100], atol=1e-7)
    total = osc.load(prepared, "total", history=10, horizon=5)
    assert total.train_size + total.test_size == 3 * (10_001 - 14)
    assert osc.train_count("total", 10, 5) == total.train_size
    assert prepared.joinpath("oscillation.npz").read_bytes() == _bytes_again(prepared)


def _bytes_again(prepared):
    again = prepared / "again.npz"
    osc.prepare(again)
    return again.read_bytes()


def test_regression_losses():
    import jax.numpy as jnp

    from llqr.optim.losses import regression_loss, regression_sums

    pred, target = jnp.array([[0.5, 3.0], [0.0, 0.0]]), jnp.zeros((2, 2))
    assert float(regression_loss("mse", pred, target)) == pytest.approx((0.25 + 9.0) / 4)
    assert float(regression_loss("huber", pred, target)) == pytest.approx((0.125 + 2.5) / 4)
    total, n = regression_sums("mse", pred, target)
    assert (float(total), float(n)) == pytest.approx(((0.25 + 9.0) / 2, 2.0))


def test_the_loss_names_are_the_config_families():
    import jax.numpy as jnp

    from llqr.config.families import LOSSES, OSC_VARIANTS, REGRESSION_LOSSES
    from llqr.config.fields import FIELDS
    from llqr.optim.losses import regression_loss

    assert FIELDS["loss"].metadata["choices"] is LOSSES and FIELDS["osc_variant"].metadata["choices"] is OSC_VARIANTS
    assert set(osc.VARIANTS) == set(OSC_VARIANTS)
    for name in REGRESSION_LOSSES:
        assert float(regression_loss(name, jnp.ones((1, 2)), jnp.ones((1, 2)))) == 0.0
    with pytest.raises(ValueError, match="unknown regression loss"):
        regression_loss("cross_entropy", jnp.ones((1, 2)), jnp.ones((1, 2)))


def pytorch_lstm_params(inputs: int, hidden: int, layers: int) -> int:
    """torch.nn.LSTM: per layer W_ih (4h, in), W_hh (4h, h), b_ih and b_hh (4h each); in = hidden
    after the first layer."""
    return sum(4 * hidden * ((inputs if i == 0 else hidden) + hidden) + 2 * 4 * hidden for i in range(layers))


def test_parameter_count_is_the_studys():
    import jax
    import jax.numpy as jnp

    from llqr.models import build_model

    cfg = resolve("lstm-osc-hlr")
    model = build_model(cfg, num_classes=1)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((2, 50, 1)))
    count = sum(math.prod(a.shape) for a in jax.tree_util.tree_leaves(shapes["params"]))
    expected = 2 * pytorch_lstm_params(1, 128, 3) + 128 + 1  # encoder, decoder, Linear(128, 1)
    assert count == expected == 662_657


def test_regression_config_refusals():
    resolve("lstm-osc-hlr")
    with pytest.raises(ConfigError, match="loss=mse or huber"):
        resolve("lstm-osc-hlr", {"loss": "cross_entropy"})
    with pytest.raises(ConfigError, match="loss=cross_entropy"):
        resolve("digits-mlp", {"loss": "mse"})
    with pytest.raises(ConfigError, match="use_preconditioner"):
        resolve("lstm-osc-hlr", {"use_preconditioner": True})
    with pytest.raises(ConfigError, match="lstm_seq2seq and dataset oscillation"):
        resolve("lstm-osc-hlr", {"model": "mlp"})


@pytest.mark.slow  # ~15 s of CPU: compiling the LSTM scans
def test_tiny_preset_run_through_the_cli(tmp_path):
    from conftest import run_regression_cli

    events = run_regression_cli(tmp_path, ["preset=lstm-osc-hlr", "lstm_hidden=8", "lstm_layers=1", "osc_history=10",
                                           "osc_horizon=10"])
    assert not any("accuracy" in key for e in events for key in e)
