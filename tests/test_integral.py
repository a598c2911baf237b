"""The HyperbolicLR study's integral-operator task: the generator's equations on hand-computed
cases, its determinism and file, and the DeepONet / TFONet layer lists (parameter counts by
functions that follow the study's PyTorch modules in paper/model.py)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llqr.data import integral, paths
from llqr.models.deeponet import DeepONet
from llqr.models.tfonet import TFONet, positional_encoding

# --- the generator --------------------------------------------------------------------------------


def test_grid_queries_and_embedding_size_are_the_studys():
    grid = integral.rounded_linspace(1000)
    assert grid[0] == 0.0 and grid[-1] == 1.0 and grid[1] == 0.001 and grid[500] == 0.501  # 500/999 = 0.5005
    assert np.all(np.diff(grid) > 0)
    queries = integral.rounded_linspace(100)
    assert list(queries[:6]) == [0.0, 0.01, 0.02, 0.03, 0.04, 0.051]  # 5/99 = 0.0505 rounds half up
    assert integral.embedding_size(1000) == 2048 and integral.embedding_size(5) == 8
    k = integral.squared_exponential
    assert np.allclose(integral.circulant_row(8, 4, 0.5), [k(0, .5), k(.25, .5), k(.5, .5), k(.75, .5), k(1, .5),
                                                           k(.75, .5), k(.5, .5), k(.25, .5)])


def test_the_fields_have_the_kernels_covariance():
    """Fed the unit vectors, the sampler's map is C^½; its Gram matrix over the first n points is
    the kernel k(|i − j|/n) (an exact embedding: no eigenvalue was truncated)."""
    n, length = 12, 0.1
    sqrt_eig = integral.embedding_sqrt_eigenvalues(n, length)
    columns = integral.grf(sqrt_eig, np.eye(len(sqrt_eig)), n)  # row k: C^½ e_k, first n entries
    lag = np.abs(np.arange(n)[:, None] - np.arange(n)[None, :]) / n
    assert np.allclose(columns.T @ columns, integral.squared_exponential(lag, length), atol=1e-10)


def test_the_embedding_doubles_until_no_eigenvalue_is_negative():
    for length in (0.1, 0.4):
        sqrt_eig = integral.embedding_sqrt_eigenvalues(1000, length)
        m = len(sqrt_eig)
        assert np.fft.fft(integral.circulant_row(m, 1000, length)).real.min() > -integral.EMBEDDING_TOLERANCE
        assert m == 2048 or np.fft.fft(integral.circulant_row(m // 2, 1000, length)).real.min() \
            <= -integral.EMBEDDING_TOLERANCE


def test_the_spline_integral_is_exact_for_a_quadratic():
    """Quadratic slopes are exact for a quadratic and a cubic Hermite piece reproduces it, so
    ∫_0^y (3x² − 2x + 1) dx = y³ − y² + y at every query point, on the study's uneven grid."""
    x, y = integral.rounded_linspace(1000), integral.rounded_linspace(100)
    u = np.stack([3 * x ** 2 - 2 * x + 1, np.full_like(x, 2.0)])
    slopes = integral.quadratic_slopes(x, u)
    assert np.allclose(slopes[0], 6 * x - 2) and np.allclose(slopes[1], 0)
    g = integral.hermite_integral(x, u, slopes, y)
    assert np.allclose(g[0], y ** 3 - y ** 2 + y, atol=1e-12) and np.allclose(g[1], 2 * y, atol=1e-12)


def test_one_hand_computed_piece():
    """Nodes 0, 1, 2 with values 0, 1, 0: slopes 2, 0, −2 (the parabola 2x − x²); the first piece
    integrates to h(y0 + y1)/2 + h²(m0 − m1)/12 = 1/2 + 1/6, as the parabola does (to 0.5: 1/4 − 1/24)."""
    x, u = np.array([0.0, 1.0, 2.0]), np.array([[0.0, 1.0, 0.0]])
    slopes = integral.quadratic_slopes(x, u)
    assert np.allclose(slopes, [[2, 0, -2]])
    assert np.allclose(integral.hermite_integral(x, u, slopes, np.array([0.0, 0.5, 1.0, 2.0])),
                       [[0.0, 0.5 ** 2 - 0.5 ** 3 / 3, 2 / 3, 4 / 3]])


def test_normalisation_maps_the_extreme_bands_to_plus_minus_one():
    fields = np.random.default_rng(3).normal(size=(50, 40)) * 3 + 1
    u = integral.normalize(fields)
    top, bottom = u.max(axis=1), u.min(axis=1)
    assert math.isclose(top.mean() + top.std(ddof=1), 1.0) and math.isclose(bottom.mean() - bottom.std(ddof=1), -1.0)


def test_generation_is_seeded_and_shaped(tmp_path):
    a, b = integral.generate(samples=20, seed=5), integral.generate(samples=20, seed=5)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["u"], integral.generate(samples=20, seed=6)["u"])
    assert a["u"].shape == (20, 100) and a["g"].shape == (20, 100)
    assert np.array_equal(a["sensors"], integral.rounded_linspace(1000)[::10]) and a["sensors"][-1] == 0.991
    assert np.all(a["g"][:, 0] == 0) and np.all((a["length_scales"] >= 0.1) & (a["length_scales"] < 0.4))
    # G(u)(y) against the trapezoid rule on the sensors, interpolated to the query points below 0.991: the
    # same integral of the same field, to within the 0.01 grid's error
    cumulative = np.concatenate([np.zeros((20, 1)), np.cumsum(np.diff(a["sensors"]) * (a["u"][:, 1:] + a["u"][:, :-1])
                                                              / 2, axis=1)], axis=1)
    below = a["queries"] <= a["sensors"][-1]
    rough = np.stack([np.interp(a["queries"][below], a["sensors"], row) for row in cumulative])
    assert np.abs(a["g"][:, below] - rough).max() < 5e-3


def test_prepare_writes_the_same_bytes_and_load_builds_the_model_inputs(tmp_path):
    first, second = tmp_path / "a" / paths.INTEGRAL, tmp_path / "b" / paths.INTEGRAL
    counts = integral.prepare(first, samples=20)
    integral.prepare(second, samples=20)
    assert first.read_bytes() == second.read_bytes() and counts["train"] == 16 and counts["test"] == 4
    data = integral.load(first.parent)
    assert data.x_train.shape == (16, 2, 100) and data.y_train.shape == (16, 100) and data.x_test.shape == (4, 2, 100)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.float32 and data.task == "regression"
    assert np.array_equal(data.x_test[:, 1], np.broadcast_to(integral.rounded_linspace(100).astype(np.float32),
                                                             (4, 100)))
    with pytest.raises(integral.DataError, match="prepare_integral"):
        integral.load(tmp_path / "missing")


# --- the models ------------------------------------------------------------------------------------


def linear(fan_in: int, fan_out: int) -> int:
    return fan_in * fan_out + fan_out


def deeponet_count(sensors=100, hidden=1024, layers=6, basis=50) -> int:
    """paper/model.py DeepONet: create_net([100] + [hidden]·(layers−1) + [basis]) twice (the
    trunk's input width 1) and the scalar bias."""

    def net(width):
        sizes = [width] + [hidden] * (layers - 1) + [basis]
        return sum(linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    return net(sensors) + net(1) + 1


def tfonet_count(d=128, ff=512, layers=3, templates=False) -> int:
    """paper/model.py TFONet: TFEncoder (Linear(1, d), ``layers`` TransformerEncoderLayers) and
    TFDecoder (Linear(1, d), ``layers`` TransformerDecoderLayers, Linear(d, 1)); an attention is
    in_proj (3d × d + 3d) + out_proj, a LayerNorm 2d. ``templates``: also the unused
    ``encoder_layer`` / ``decoder_layer`` each module keeps, as torch's parameters() counts them."""
    attention = 3 * d * d + 3 * d + linear(d, d)
    feed_forward = linear(d, ff) + linear(ff, d)
    encoder_layer = attention + feed_forward + 2 * 2 * d
    decoder_layer = 2 * attention + feed_forward + 3 * 2 * d
    total = (layers + templates) * (encoder_layer + decoder_layer) + 2 * linear(1, d) + linear(d, 1)
    return total


def count(model, x) -> int:
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    return sum(math.prod(a.shape) for a in jax.tree_util.tree_leaves(shapes))


@pytest.mark.parametrize("model, expected", [
    (DeepONet(), deeponet_count()), (DeepONet(hidden=16, layers=3, basis=8), deeponet_count(hidden=16, layers=3,
                                                                                             basis=8)),
    (TFONet(), tfonet_count()), (TFONet(d_model=16, ff=32, layers=2), tfonet_count(d=16, ff=32, layers=2))])
def test_parameter_counts_follow_the_studys_layer_lists(model, expected):
    assert count(model, jnp.zeros((2, 2, 100))) == expected


def test_the_study_sizes_counts():
    assert deeponet_count() == 8_604_773
    assert tfonet_count() == 1_389_185 and tfonet_count(templates=True) == 1_852_033


def test_deeponet_is_branch_times_trunk_per_query_point():
    model = DeepONet(hidden=16, layers=3, basis=8)
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(3, 2, 10)), jnp.float32)
    moved = x.at[:, 1, 4].set(0.77)  # one query point moved: only its output changes
    params = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    both = jax.jit(model.apply)(params, jnp.concatenate([x, moved]))  # one compile (op by op is slow)
    out = both[:3]
    assert both.shape == (6, 10) and both.dtype == jnp.float32
    changed = np.abs(np.asarray(both[3:] - out)) > 0
    assert changed[:, 4].all() and not np.delete(changed, 4, axis=1).any()
    p = params["params"]
    assert p["bias"].shape == (1,) and set(p["branch"]) == {"linear_0", "linear_1", "linear_2"}
    bound = 1 / math.sqrt(16)  # PyTorch's Linear init U(±1/√fan_in)
    assert np.abs(p["trunk"]["linear_1"]["kernel"]).max() <= bound and np.abs(p["trunk"]["linear_1"]["bias"]).max() > 0


@pytest.mark.slow  # 9 s of compiles; TFONet's parameter count and shapes stay in the default run
def test_tfonet_layers_start_identical_and_positions_are_the_sinusoid_table():
    model = TFONet(d_model=16, ff=32, layers=2)
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(3, 2, 10)), jnp.float32)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), x)["params"]
    for stack in ("encoder", "decoder"):  # nn.TransformerEncoder/Decoder deep-copy one layer
        for leaf in jax.tree_util.tree_leaves(params[stack]):
            assert leaf.shape[0] == 2 and np.array_equal(leaf[0], leaf[1])
    q = params["decoder"]["cross_attn"]["attn"]["query"]
    assert np.abs(q["kernel"]).max() <= math.sqrt(6 / (4 * 16)) and not np.any(q["bias"])
    assert jax.eval_shape(model.apply, {"params": params}, x).shape == (3, 10)
    table = positional_encoding(100, 16)
    assert np.allclose(table[1, :4], [math.sin(1), math.cos(1), math.sin(10000 ** (-2 / 16)),
                                      math.cos(10000 ** (-2 / 16))])
    assert np.allclose(table[0, 0::2], 0) and np.allclose(table[0, 1::2], 1)


def test_build_model_uses_the_study_sizes_unless_overridden():
    from llqr.models import build_model

    study = SimpleNamespace(model="deeponet", operator_width=None, operator_depth=None)
    assert build_model(study) == DeepONet(hidden=1024, layers=6)
    assert build_model(SimpleNamespace(model="tfonet", operator_width=32, operator_depth=1)) == TFONet(d_model=32,
                                                                                                     layers=1)


# --- the presets, through the runner ---------------------------------------------------------------


def test_presets_and_refusals():
    from llqr.config import ConfigError
    from llqr.config.presets import resolve

    for name, lr in (("deeponet-integral-hlr", 5e-3), ("tfonet-integral-hlr", 1e-3)):
        cfg = resolve(name)
        assert (cfg.dataset, cfg.loss, cfg.batch_size, cfg.total_epochs, cfg.learning_rate) == ("integral", "mse", 128,
                                                                                                  200, lr)
        assert (cfg.optimizer, cfg.weight_decay, cfg.lr_scheduler["eta_min"]) == ("adamw", 0.01, 1e-6)
    with pytest.raises(ConfigError, match="dataset integral go together"):
        resolve("deeponet-integral-hlr", {"model": "mlp"})
    with pytest.raises(ConfigError, match="dataset integral go together"):
        resolve("digits-mlp", {"model": "tfonet"})


@pytest.mark.slow  # two small models, 40 steps each: ~10-30 s each on a busy CPU
@pytest.mark.parametrize("preset, sizes", [("deeponet-integral-hlr", ["operator_width=32", "operator_depth=3"]),
                                           ("tfonet-integral-hlr", ["operator_width=16", "operator_depth=1"])])
def test_tiny_preset_run_through_the_cli(tmp_path, preset, sizes):
    from conftest import run_regression_cli

    integral.prepare(paths.integral_file(paths.folder(tmp_path / "data", "integral")), samples=640)
    run_regression_cli(tmp_path, ["preset=" + preset, *sizes, "batch_size=32"])
