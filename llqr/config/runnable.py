"""Runnability: what the runner (and the model and data code it calls) would refuse at job time for
a reason the config alone decides, refused before a job is queued (JAX-free)."""

from __future__ import annotations

import itertools

from .errors import ConfigError
from .families import EXACT_MAX_PARAMS, RESEARCH_DIVERGENCES, SEPARABLE_DIVERGENCES
from .fields import FIELDS
from .keyspec import field_default

# Models that pool a 32x32 image down to nothing before their head: not for digits (8x8) or mnist (28x28).
LARGE_IMAGE_MODELS = ("vgg16bn", "vgg16", "vgg19", "wide_resnet28x10", "pyramidnet110", "svag_vgg16", "svag_vgg19")
SMALL_IMAGE_DATASETS = {"digits": "8x8", "mnist": "28x28"}
# Window-attention models whose layout divides the image side by (patch or stem) x 2^(downsamplings),
# for sides below 64 (llqr/models/swin.py swin_layout, gcvit.py gcvit_layout; a test keeps the two in step).
SIDE_DIVISORS = {"swin": 8, "gcvit": 16}
SMALL_IMAGE_SIDES = {"digits": 8, "mnist": 28}
# Flattened input size and classes of the image datasets (the loaders' (H, W, C) and labels).
_INPUT_SIZE = {"digits": 8 * 8, "mnist": 28 * 28, "cifar10": 32 * 32 * 3, "cifar100": 32 * 32 * 3,
               "svhn": 32 * 32 * 3, "imagenet": 224 * 224 * 3}
_CLASSES = {"cifar100": 100, "imagenet": 1000}
# Image models with far more than EXACT_MAX_PARAMS parameters at every size the config allows (the
# smallest, simple_cnn on digits, has 133,354).
_LARGE_MODELS = ("resnet18", "resnet34", "resnet50", "resnet50_cifar",
                 "vgg16bn", "wide_resnet28x10", "pyramidnet110", "preresnet32", "vgg16",
                 "vgg19", "simple_cnn", "simple_vit", "vit_ti16", "svag_preresnet32", "svag_vgg16", "svag_vgg19",
                 "resnet32")


def _mlp_params(cfg: dict) -> int | None:
    """Parameters of the config's mlp or si_mlp on its image dataset (None for other models/data)."""
    if cfg["model"] not in ("mlp", "si_mlp") or cfg["dataset"] not in _INPUT_SIZE:
        return None
    widths = [_INPUT_SIZE[cfg["dataset"]], *cfg["mlp_hidden"], _CLASSES.get(cfg["dataset"], 10)]
    if cfg["model"] == "si_mlp":  # bias-free hidden kernels only; the head is fixed
        return sum(a * b for a, b in itertools.pairwise(widths[:-1]))
    return sum((a + 1) * b for a, b in itertools.pairwise(widths))


class _Keys:
    """A RunConfig read by key, like its dict (without copying every value)."""

    def __init__(self, cfg):
        self._cfg = cfg

    def __getitem__(self, key):
        return getattr(self._cfg, key)


def _default(key: str):
    return field_default(FIELDS[key])


def check_runnable(cfg, devices: int | None = None) -> None:
    """Everything the runner (and the model and data code it calls) would refuse at job time for a
    reason the config alone decides, as a ConfigError naming the key: research-only features, a
    model that does not suit the dataset, an exact preconditioner too large to materialise, a
    chunked fit of a divergence that is not a sum over samples (dataset sizes are checked by
    llqr.workflow.job_checks, which knows them). ``cfg``: a RunConfig or its dict, as the job gets
    it (after llqr.workflow.cells.normalise in the workflow). ``devices``: the job's GPUs where
    known (data_parallel must split its batches evenly over them). JAX-free; the runner calls it
    before loading any data."""
    cfg = cfg if isinstance(cfg, dict) else _Keys(cfg)
    llqr = cfg["use_preconditioner"]
    if llqr and cfg["precond_on_update"]:
        raise ConfigError("precond_on_update=true (P applied after the main optimizer) is research-only in the "
                          "reference, whose signs look inconsistent there; it is not implemented: set "
                          "precond_on_update=false")
    if llqr and cfg["divergence"] in RESEARCH_DIVERGENCES:
        raise ConfigError(f"divergence={cfg['divergence']} is research-only and not implemented "
                          f"(research-only: {', '.join(RESEARCH_DIVERGENCES)})")
    if cfg["sam_mode"] is not None:
        for key in ("sam_research_base_vector_source", "sam_research_perturb_sign"):
            if cfg[key] != _default(key):
                raise ConfigError(f"{key}={cfg[key]} is a research-only SAM ablation and not implemented "
                                  f"(only {key}={_default(key)} is)")
    if llqr and cfg["divergence"] == "renyi" and cfg["divergence_order_param"] == 1.0:
        raise ConfigError("divergence_order_param=1 is the KL limit of divergence=renyi; use divergence=ngd or "
                          "reverse_kl")
    if llqr and cfg["block_structure"] != "exact":
        if cfg["llqr_batch_update_mode"] == "chunked_lqr_segment":
            chunk_key = "llqr_batch_update_chunk_size"
        elif cfg["llqr_second_order_mode"] == "sample_separable_exact":
            chunk_key = "llqr_second_order_chunk_size"
        else:
            chunk_key = None
        chunk = cfg[chunk_key] if chunk_key else None
        if chunk and chunk < cfg["precond_batch_size"] and cfg["divergence"] not in SEPARABLE_DIVERGENCES:
            raise ConfigError(f"divergence={cfg['divergence']} is not a sum over samples, so a chunked fit "
                              f"({chunk_key}={chunk} < precond_batch_size={cfg['precond_batch_size']}) cannot split "
                              f"it; chunked fits need divergence {', '.join(SEPARABLE_DIVERGENCES)}")
    if llqr and cfg["block_structure"] == "exact":
        n = _mlp_params(cfg)
        if n is not None and n > EXACT_MAX_PARAMS:
            raise ConfigError(f"block_structure=exact materialises the {n} x {n} curvature of this model's {n} "
                              f"parameters; it is a reference for models of at most {EXACT_MAX_PARAMS} parameters "
                              f"(use dense, e-kfac or diagonal here)")
        if cfg["model"] in _LARGE_MODELS:
            raise ConfigError(f"block_structure=exact materialises the dense curvature of all parameters, for "
                              f"models of at most {EXACT_MAX_PARAMS}; model={cfg['model']} has far more (use "
                              f"dense, e-kfac or diagonal)")
    _check_model(cfg)
    if cfg["data_parallel"] and devices and devices > 1:
        for key in _sharded_sizes(cfg):
            if cfg[key] is not None and cfg[key] % devices:
                raise ConfigError(f"data_parallel: {key}={cfg[key]} does not split evenly over the job's {devices} "
                                  f"GPUs; use a multiple of {devices} or data_parallel=false")


def _sharded_sizes(cfg) -> tuple[str, ...]:
    """The keys whose batches data_parallel splits over the devices: noisy GD shards its chunk of the
    fixed subset (the whole subset without one), other runs their minibatch and P-fit batch."""
    if cfg["noise"] == "noisy_gd":
        return ("noisy_gd_chunk",) if cfg["noisy_gd_chunk"] is not None else ("noisy_gd_examples",)
    return ("batch_size", "precond_batch_size") if cfg["use_preconditioner"] else ("batch_size",)


def _check_model(cfg: dict) -> None:
    """What llqr.models.build_model and the models refuse for the config's model and dataset."""
    model, dataset = cfg["model"], cfg["dataset"]
    if model in LARGE_IMAGE_MODELS and dataset in SMALL_IMAGE_DATASETS:
        raise ConfigError(f"model={model} needs images of at least 32x32 (cifar10, cifar100, svhn, "
                          f"imagenet); "
                          f"dataset={dataset} has {SMALL_IMAGE_DATASETS[dataset]} images")
    side, divisor = SMALL_IMAGE_SIDES.get(dataset), SIDE_DIVISORS.get(model)
    if side is not None and divisor is not None and side % divisor:
        raise ConfigError(f"model={model} needs an image side divisible by {divisor} (its patches and "
                          f"downsamplings); dataset={dataset} has {side}x{side} images")
    if model == "vgg16bn" and cfg["dropout_rate"]:
        raise ConfigError(f"dropout_rate={cfg['dropout_rate']}: vgg16bn's two dropouts are fixed at the "
                          f"reference's 0.5; leave dropout_rate at 0")
    if model == "preresnet32" and cfg["norm"] == "none":
        raise ConfigError("preresnet32 needs norm=bn or norm=gn (norm=none is for vgg16/vgg19)")
    if model == "si_mlp" and not cfg["mlp_hidden"]:
        raise ConfigError("mlp_hidden=[]: si_mlp needs at least one hidden layer (its head is fixed)")
