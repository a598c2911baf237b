"""Step-time estimates from FLOPs, for presets nobody has timed yet.

XLA's cost analysis of the model's forward pass (shapes only: nothing is initialised or run) gives
FLOPs per example; a training step costs about three forward passes (forward + backward) over the
batch. Divided by the GPU's peak throughput times an assumed utilisation, that is an order-of-
magnitude step time: good for planning, to be replaced by a measurement (``llqr.plan calibrate``).
"""

from __future__ import annotations

# Model input per example, by dataset (the loaders' shapes; ImageNet at the 224 training crop).
INPUT_SHAPES = {"digits": (8, 8), "mnist": (28, 28), "cifar10": (32, 32, 3), "cifar100": (32, 32, 3),
                "svhn": (32, 32, 3), "imagenet": (224, 224, 3), "mod_sum": (4,), "imagenet100": (224, 224, 3),
                "cora": (2708, 2708 + 1433), "imagewoof": (224, 224, 3),  # cora: the whole graph, [Â | X] per node
                "oscillation": (50, 1), "integral": (2, 100)}  # 50 history steps; (sensor values, query points)
NUM_CLASSES = {"cifar100": 100, "imagenet": 1000, "imagenet100": 100, "cora": 7, "oscillation": 1, "integral": 1}
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
        inputs = (jax.ShapeDtypeStruct((1, *INPUT_SHAPES[cfg.dataset]), jnp.float32),)
        per_batch = cfg.batch_size
    variables = jax.eval_shape(lambda k, *x: model.init(k, *x, train=False), jax.random.PRNGKey(0), *inputs)
    lowered = jax.jit(lambda v, *x: model.apply(v, *x, train=False)).lower(variables, *inputs)
    analysis = lowered.cost_analysis()
    if isinstance(analysis, list):  # older JAX: one dict per computation
        analysis = analysis[0]
    return float(analysis["flops"]), float(per_batch)


def estimate_seconds(cfg, peak_tflops: float, utilisation: float) -> tuple[float, str]:
    """(seconds per step, how it was derived) for ``cfg`` on one GPU of ``peak_tflops``."""
    fwd, per_batch = forward_flops(cfg)
    seconds = 3.0 * fwd * per_batch / (peak_tflops * 1e12 * utilisation)
    source = (f"estimate: 3 x {fwd / 1e9:.4g} GFLOP/sample x {per_batch:.0f} samples / "
              f"({peak_tflops:g} TFLOPS x {utilisation:g})")
    return seconds, source
