"""Route equivalence of the LLQR fit on a conv + inference-BN + ReLU mini-ResNet (spec §5 item 5).

Every route of ``make_llqr_fit`` (operator mode, fast paths, chunked LQR segments, sample-separable
second-order products, the paper's large-batch chunk of 128) must give the same fitted blocks as the
reference route (cached_exact + full_batch + batched_exact + fast paths on), for ngd and newton and
for the diagonal and e-kfac structures: rtol 1e-10 in float64 and 1e-5 in float32.

Each fit is a few clipped momentum steps from a randomly perturbed warm start, at a precond lr large
enough that the blocks move far from that start and the LQR cost falls, so the agreement is not that
of blocks that never moved.

Runtime: ~50 fits, each a fresh trace and XLA compile. The model is jitted once per input shape so
the fits reuse its trace; every fit is compiled at XLA backend optimisation level 0 without the CPU
fusion emitters (the reference alike: that cuts each compile ~4x and changes only the rounding of
fused float ops); and the fits the selected tests need are traced up front while two threads compile
and run them.
"""

from __future__ import annotations

import contextlib
import functools
from concurrent.futures import ThreadPoolExecutor

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llqr.config import build_config
from llqr.optim import init_blocks, make_llqr_fit
from xla_test_flags import COMPILER_OPTIONS


def _enable_x64():
    ctx = getattr(jax, "enable_x64", None)
    if ctx is None:
        from jax._src import config as _config

        ctx = _config.enable_x64
    return ctx(True)


class MiniResNet(nn.Module):
    """Conv stem -> BN -> ReLU -> residual block (strided conv-BN-ReLU-conv-BN, strided 1x1 conv-BN
    projection skip) -> add -> ReLU -> global average pool -> Dense -> log_softmax: 1.1k parameters."""

    num_classes: int = 5

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9)
        h = nn.relu(norm()(nn.Conv(4, (3, 3), use_bias=False)(x)))
        r = nn.relu(norm()(nn.Conv(8, (3, 3), strides=2, use_bias=False)(h)))
        r = norm()(nn.Conv(8, (3, 3), use_bias=False)(r))
        skip = norm()(nn.Conv(8, (1, 1), strides=2, use_bias=False)(h))
        h = nn.relu(r + skip)
        return nn.log_softmax(nn.Dense(self.num_classes)(jnp.mean(h, axis=(1, 2))))


MODEL = MiniResNet()
# (fit batch, input shape): chunks of 4 divide 8, chunks of 5 (5 + 3) and 3 (3 + 3 + 2) do not; the
# paper's chunk of 128 on a larger batch (128 + 72), with 4x4 inputs to keep it cheap
BATCH, SHAPE = 8, (8, 8, 3)
PAPER_BATCH, PAPER_SHAPE = 200, (4, 4, 3)
STEPS = 5
DAMPING = 0.1
# precond lr per (divergence, fit batch), ngd's curvature being summed over the batch and newton's a
# mean: each moves the blocks by 20-50% of their largest entry in 5 steps (no diagonal entry comes
# near the 1e-8 clamp), and the LQR cost falls
LR = {("ngd", BATCH): 0.01, ("ngd", PAPER_BATCH): 0.01, ("newton", BATCH): 0.03, ("newton", PAPER_BATCH): 0.3}
STRUCTURES = ("diagonal", "e-kfac")
DIVERGENCES = ("ngd", "newton")

REFERENCE = {"llqr_operator_mode": "cached_exact", "llqr_batch_update_mode": "full_batch",
             "llqr_second_order_mode": "batched_exact", "llqr_use_fast_paths": True}
ROUTES = {
    "lowmem_exact_k": {"llqr_operator_mode": "lowmem_exact_k"},
    "lowmem_exact_full": {"llqr_operator_mode": "lowmem_exact_full"},
    "fast_paths_off": {"llqr_use_fast_paths": False},
    "chunked_4": {"llqr_batch_update_mode": "chunked_lqr_segment", "llqr_batch_update_chunk_size": 4},
    "chunked_5": {"llqr_batch_update_mode": "chunked_lqr_segment", "llqr_batch_update_chunk_size": 5},
    "separable_3": {"llqr_second_order_mode": "sample_separable_exact", "llqr_second_order_chunk_size": 3},
    "separable_5": {"llqr_second_order_mode": "sample_separable_exact", "llqr_second_order_chunk_size": 5},
    "paper_chunked_128": {"llqr_batch_update_mode": "chunked_lqr_segment", "llqr_batch_update_chunk_size": 128},
}
CASES = [(d, s) for d in DIVERGENCES for s in STRUCTURES]
# float32: each route once, the four (divergence, structure) cases in turn
F32_CASES = [(route, *CASES[i % len(CASES)]) for i, route in enumerate(ROUTES)]
# float64: every route x case; by default each route on one case (another than its float32 one),
# the rest of the cross product in the slow set (each fit is a separate compile)
_F64_DEFAULT = {(route, *CASES[(i + 1) % len(CASES)]) for i, route in enumerate(ROUTES)}
F64_CASES = [pytest.param(route, d, s, marks=() if (route, d, s) in _F64_DEFAULT else pytest.mark.slow)
             for route in ROUTES for d, s in CASES]


def _batch(route: str) -> int:
    return PAPER_BATCH if route == "paper_chunked_128" else BATCH


@functools.cache
def _problem(batch: int):
    """float64 numpy parameters (kernels ~ N(0, 1/fan_in), BN scale/bias away from (1, 0)), running
    BN statistics away from (0, 1) (so no BN is the identity), a perturbed warm start per structure,
    and a fit batch. Drawn with numpy on the shapes of ``MODEL.init``: compiling flax's float64
    initialisers costs seconds."""
    shape = PAPER_SHAPE if batch == PAPER_BATCH else SHAPE
    rng = np.random.default_rng(0)
    with _enable_x64():
        variables = jax.eval_shape(MODEL.init, jax.random.PRNGKey(0), jnp.zeros((1, *shape), jnp.float64))

    def param(path, leaf):
        name = path[-1].key
        if name == "kernel":
            return rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
        return (name == "scale") + 0.3 * rng.standard_normal(leaf.shape)

    params = jax.tree_util.tree_map_with_path(param, variables["params"])
    stats = jax.tree_util.tree_map_with_path(
        lambda path, leaf: 0.5 * rng.standard_normal(leaf.shape) if path[-1].key == "mean"
        else np.exp(0.5 * rng.standard_normal(leaf.shape)), variables["batch_stats"])
    with _enable_x64():
        starts = {s: jax.tree_util.tree_map(lambda b: np.asarray(b) + 0.05 * rng.standard_normal(b.shape),
                                            jax.jit(init_blocks, static_argnums=0)(s, params))
                  for s in STRUCTURES}
    data = np.random.default_rng(batch)
    return params, stats, starts, data.standard_normal((batch, *shape)), data.integers(0, MODEL.num_classes, batch)


@jax.jit
def _log_probs(params, batch_stats, x):
    """The inference-mode network; jitted so that every fit reuses its trace per input shape."""
    return MODEL.apply({"params": params, "batch_stats": batch_stats}, x, train=False)


def _context(dtype: str):
    return _enable_x64() if dtype == "float64" else contextlib.nullcontext()


_POOL = ThreadPoolExecutor(max_workers=2)
_FITS: dict = {}


def _submit(route: str, batch: int, divergence: str, structure: str, dtype: str):
    """Trace one fit here; compile and run it on the pool. Its future yields (start, fitted blocks,
    first cost, last cost) as float64 numpy."""
    key = (route, batch, divergence, structure, dtype)
    if key in _FITS:
        return _FITS[key]
    cfg = build_config({**REFERENCE, **ROUTES.get(route, {}), "block_structure": structure, "divergence": divergence,
                        "damping": DAMPING, "precond_steps": STEPS, "precond_batch_size": batch,
                        "warm_start_precond": True})
    params, stats, starts, x, y = _problem(batch)
    with _context(dtype):
        cast = lambda tree: jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), tree)  # noqa: E731
        args = (cast(starts[structure]), cast(params), cast(stats), cast(x), jnp.asarray(y), LR[divergence, batch], 0.0)
        lowered = make_llqr_fit(_log_probs, cfg).lower(*args)

    def compile_and_run():
        with _context(dtype):
            blocks, first, last = lowered.compile(COMPILER_OPTIONS)(*args)
            assert all(leaf.dtype == jnp.dtype(dtype) for leaf in jax.tree_util.tree_leaves(blocks))
            return (starts[structure], jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), blocks),
                    float(first), float(last))

    _FITS[key] = _POOL.submit(compile_and_run)
    return _FITS[key]


def _needed(route, divergence, structure, dtype):
    """The keys of the reference fit and the route's fit that one comparison needs."""
    return [(name, _batch(route), divergence, structure, dtype) for name in ("reference", route)]


@pytest.fixture(scope="module", autouse=True)
def _prefetch(request):
    """Trace every fit the selected tests of this module need, in test order, so that the pool
    compiles while the rest are traced."""
    for item in request.session.items:
        spec = getattr(item, "callspec", None)
        if item.module.__name__ == __name__ and spec and "route" in spec.params:
            dtype = "float32" if item.originalname.endswith("float32") else "float64"
            for key in _needed(spec.params["route"], spec.params["divergence"], spec.params["structure"], dtype):
                _submit(*key)
    yield
    _POOL.shutdown(cancel_futures=True)


def _worst(got, want):
    """max over leaves of max|got - want| / max|want| (each leaf's error against its scale)."""
    return max(float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
               for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)))


def _check_route(route, divergence, structure, dtype, rtol):
    (start, ref, ref_first, ref_last), (_, got, first, last) = [
        _submit(*key).result() for key in _needed(route, divergence, structure, dtype)]
    assert _worst(ref, start) > 0.1  # the fit moved the blocks far from the start
    assert last < first  # and lowered the LQR cost
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(ref)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
        # elementwise, with an absolute floor of rtol x the leaf's largest entry for entries near 0
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.max(np.abs(b)))
    np.testing.assert_allclose([first, last], [ref_first, ref_last], rtol=rtol)


def test_batch_norm_is_not_the_identity_in_inference_mode():
    params, stats, _, x, _ = _problem(BATCH)
    with _enable_x64():
        trivial = jax.tree_util.tree_map_with_path(
            lambda path, a: np.zeros_like(a) if path[-1].key == "mean" else np.ones_like(a), stats)
        assert float(jnp.max(jnp.abs(_log_probs(params, stats, x) - _log_probs(params, trivial, x)))) > 0.1


@pytest.mark.parametrize("route,divergence,structure", F64_CASES)
def test_route_gives_the_reference_blocks_float64(route, divergence, structure):
    _check_route(route, divergence, structure, "float64", rtol=1e-10)


@pytest.mark.parametrize("route,divergence,structure", F32_CASES)
def test_route_gives_the_reference_blocks_float32(route, divergence, structure):
    _check_route(route, divergence, structure, "float32", rtol=1e-5)
