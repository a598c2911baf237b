"""Step-time estimates from FLOPs, for presets nobody has timed yet.

XLA's cost analysis of the model's forward pass (shapes only: nothing is initialised or run) gives
FLOPs per example; a training step costs about three forward passes (forward + backward) over the
batch. Divided by the GPU's peak throughput times an assumed utilisation, that is an order-of-
magnitude step time: good for planning, to be replaced by a measurement (``llqr.plan calibrate``).

XLA counts a loop's body once, whatever its trip count, so a model built on ``scan`` (the LSTM
seq2seq's time steps, TFONet's stacked layers) would be priced as one step or one layer:
``scan_corrected_flops`` adds the other ``length - 1`` passes of every scan body, read from the
traced program (the scan lengths follow the input shape and the model's sizes).
"""

from __future__ import annotations

# Model input per example, by dataset (the loaders' shapes; ImageNet at the 224 training crop).
INPUT_SHAPES = {"digits": (8, 8, 1), "mnist": (28, 28), "cifar10": (32, 32, 3), "cifar100": (32, 32, 3),
                "svhn": (32, 32, 3), "imagenet": (224, 224, 3), "mod_sum": (4,), "imagenet100": (224, 224, 3),
                "cora": (2708, 2708 + 1433), "imagewoof": (224, 224, 3),  # cora: the whole graph, [Â | X] per node
                "synth_graph": (294, 294 + 140),  # llqr.data.synth_graph's NODES and WORDS
                "oscillation": (50, 1), "integral": (2, 100)}  # osc_history steps; (sensor values, query points)
NUM_CLASSES = {"cifar100": 100, "imagenet": 1000, "imagenet100": 100, "cora": 7, "synth_graph": 7, "oscillation": 1,
               "integral": 1}
# Source and target dictionary sizes for the FLOP count of a translation model.
VOCABS = {"iwslt14_de_en": (8848, 6632), "synth_de_en": (512, 512)}
PAIR_LENGTH = 28  # tokens per side of the sample pair; scaled to max_tokens per batch


def forward_flops(cfg) -> tuple[float, float]:
    """(forward FLOPs of one sample, samples per batch) for the config's model and dataset."""
    import jax
    import jax.numpy as jnp

    from ..models import build_model
    from .cost import TRANSLATION_PAIRS

    if cfg.dataset in TRANSLATION_PAIRS:
        model = build_model(cfg, vocab=VOCABS[cfg.dataset])
        src = jax.ShapeDtypeStruct((1, PAIR_LENGTH), jnp.int32)
        inputs = ((src, src),)  # the model takes one (source, previous target) pair
        per_batch = (cfg.max_tokens or 4096) / PAIR_LENGTH
    else:
        classes = cfg.modulus if cfg.dataset == "mod_sum" else NUM_CLASSES.get(cfg.dataset, 10)
        model = build_model(cfg, num_classes=classes)
        shape = INPUT_SHAPES[cfg.dataset]
        if cfg.dataset == "oscillation":
            shape = (cfg.osc_history, *shape[1:])
        inputs = (jax.ShapeDtypeStruct((1, *shape), jnp.float32),)
        per_batch = cfg.batch_size
    variables = jax.eval_shape(lambda k, *x: model.init(k, *x, train=False), jax.random.PRNGKey(0), *inputs)
    return scan_corrected_flops(lambda v, *x: model.apply(v, *x, train=False), variables, *inputs), float(per_batch)


def xla_flops(fn, *args) -> float:
    """XLA's cost analysis of ``fn`` lowered for the (abstract) ``args``: each loop body counted once."""
    import jax

    analysis = jax.jit(fn).lower(*args).cost_analysis()
    if isinstance(analysis, list):  # older JAX: one dict per computation
        analysis = analysis[0]
    return float(analysis.get("flops", 0.0))


def scan_corrected_flops(fn, *args) -> float:
    """FLOPs of ``fn(*args)`` with every scan body counted once per iteration (nested scans too)."""
    import jax

    return xla_flops(fn, *args) + _scan_extra(jax.make_jaxpr(fn)(*args).jaxpr)


def _scan_extra(jaxpr) -> float:
    """What XLA leaves out of ``jaxpr``: for a scan of length n whose body costs b once (XLA's count)
    and B with its own scans corrected, n·B - b; other sub-programs (pjit, custom_jvp) pass through."""
    extra = 0.0
    for eqn in jaxpr.eqns:
        for value in eqn.params.values():
            closed = value if hasattr(getattr(value, "jaxpr", None), "eqns") else None
            body = closed.jaxpr if closed is not None else value if hasattr(value, "eqns") else None
            if body is None:
                continue
            inner = _scan_extra(body)
            if eqn.primitive.name == "scan" and closed is not None:
                once = _closed_flops(closed)
                extra += eqn.params["length"] * (once + inner) - once
            else:
                extra += inner
    return extra


def _closed_flops(closed) -> float:
    import jax
    from jax.extend.core import jaxpr_as_fun

    avals = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in closed.in_avals]
    return xla_flops(jaxpr_as_fun(closed), *avals)


def estimate_seconds(cfg, peak_tflops: float, utilisation: float) -> tuple[float, str]:
    """(seconds per step, how it was derived) for ``cfg`` on one GPU of ``peak_tflops``."""
    fwd, per_batch = forward_flops(cfg)
    seconds = 3.0 * fwd * per_batch / (peak_tflops * 1e12 * utilisation)
    source = (f"estimate: 3 x {fwd / 1e9:.4g} GFLOP/sample x {per_batch:.0f} samples / "
              f"({peak_tflops:g} TFLOPS x {utilisation:g})")
    return seconds, source
