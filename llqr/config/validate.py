"""Coercion and validation of run-config values, with errors that say how to fix them."""

from __future__ import annotations

import difflib
import itertools
import math

from .fields import (
    FIELDS,
    KRONECKER_OPTIMIZERS,
    MODULAR_DATASETS,
    RESEARCH_DIVERGENCES,
    SEPARABLE_DIVERGENCES,
    TRANSLATION_DATASETS,
    field_default,
)
from .schedule_families import HYPERBOLIC_FAMILIES, SCHEDULE_FAMILIES, default_schedule


class ConfigError(ValueError):
    """A configuration problem, detected before any training starts."""


def suggest(word: str, candidates) -> str:
    """' (did you mean X?)' when something close exists, else ''."""
    names = [str(c) for c in candidates if c is not None]
    close = difflib.get_close_matches(str(word), names, n=1, cutoff=0.6)
    if not close and len(str(word)) >= 3:
        close = [n for n in names if n.startswith(str(word))][:1]
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_path_name(name, what: str, hidden_ok: bool = False) -> str:
    """``name`` if it is safe to build a path from: relative, no '..' component, not a hidden
    ``_`` base (unless ``hidden_ok``: an ``inherits``); else a one-line ConfigError naming ``what``."""
    text = str(name)
    parts = text.replace("\\", "/").split("/")
    hidden = text.startswith("_") and not hidden_ok
    if not text or text.startswith(("/", "\\", "~")) or ".." in parts or hidden:
        raise ConfigError(f"{what} {text!r} must be a plain relative name (no '..', no leading '/', '~' or '_')")
    return text


# Characters that mean something to a shell (or end a line): no config value that can reach a
# command line or a file name may hold one (check_safe_text).
SHELL_METACHARACTERS = frozenset(";&|$`<>\"'\\()*?[]{}!#")
# What a name that becomes a path component or a wildcard value may hold (surface names, presets).
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.+=:@-")


def check_safe_text(text, what: str, allow_space: bool = True) -> str:
    """``text`` if it holds no control character (newline, tab, ...) and no shell metacharacter
    (; & | $ ` < > quotes backslash parentheses globs ! #); else a ConfigError naming ``what``."""
    text = str(text)
    bad = sorted({c for c in text if c in SHELL_METACHARACTERS or ord(c) < 32 or ord(c) == 127
                  or (c.isspace() and not (allow_space and c == " "))})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise ConfigError(f"{what} {text!r} holds {shown}: no shell metacharacters, quotes or control characters "
                          f"(a config value must never reach a shell or a file name as code)")
    return text


def check_name(name, what: str) -> str:
    """A name that becomes a file-name component or a Snakemake wildcard value (a surface or preset
    name): letters, digits and _ . + = : @ -, not starting with '.', '_' or '-'."""
    text = str(name)
    check_safe_text(text, what, allow_space=False)
    if not text or not set(text) <= _NAME_CHARS or text[0] in "._-":
        raise ConfigError(f"{what} {text!r} must be a plain name: letters, digits and _ . + = : @ - "
                          f"(not starting with '.', '_' or '-', no '/' or spaces)")
    return text


def check_data_path(path, what: str) -> str:
    """A user-given data location (``dataset_dir``): absolute or relative, but no '..' component and
    nothing a shell would read as code."""
    text = check_safe_text(path, what)
    if not text.strip() or ".." in text.replace("\\", "/").split("/"):
        raise ConfigError(f"{what} {text!r} must be a non-empty path without a '..' component")
    return text


def unknown_key(key: str, where: str = "run config") -> ConfigError:
    return ConfigError(f"unknown key '{key}' in {where}{suggest(key, FIELDS)}")


def _fmt(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _bad(key: str, value, why: str) -> ConfigError:
    return ConfigError(f"key '{key}': bad value {_fmt(value)}: {why}")


def _as_float(key, value):
    if isinstance(value, bool):
        raise _bad(key, value, "expected a number, got a boolean")
    if isinstance(value, (int, float)):
        out = float(value)
    elif isinstance(value, str):
        try:
            out = float(value)  # YAML 1.1 reads '1e-3' as a string
        except ValueError:
            raise _bad(key, value, "expected a number") from None
    else:
        raise _bad(key, value, f"expected a number, got {type(value).__name__}")
    if not math.isfinite(out):
        raise _bad(key, value, "must be finite")
    return out


def _as_int(key, value):
    if isinstance(value, bool):
        raise _bad(key, value, "expected an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return _as_int(key, float(value)) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            pass
    raise _bad(key, value, "expected an integer")


def _as_bool(key, value):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "on", "off", "yes", "no"):
        return value.lower() in ("true", "on", "yes")
    raise _bad(key, value, "expected true or false")


def _as_str(key, value):
    if isinstance(value, str):
        return value
    raise _bad(key, value, f"expected a string, got {type(value).__name__}")


_SCALAR = {"float": _as_float, "int": _as_int, "bool": _as_bool, "str": _as_str}


def coerce_value(key: str, value):
    """Return ``value`` converted to the type of field ``key``; raise ConfigError if it cannot be."""
    if key not in FIELDS:
        raise unknown_key(key)
    meta = FIELDS[key].metadata
    kind = meta["kind"]
    if kind == "schedule":
        return coerce_schedule(key, value)
    if value is None:
        if meta["nullable"] or (meta["choices"] and None in meta["choices"]):
            return None
        raise _bad(key, value, "may not be null")
    if kind.startswith("list["):
        inner = kind[5:-1]
        if isinstance(value, str) and kind == "list[str]":
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise _bad(key, value, f"expected a list of {inner}")
        out = [_SCALAR[inner](key, v) for v in value]
    else:
        out = _SCALAR[kind](key, value)
    _check_range(key, out, meta, shown=value)
    if meta.get("path"):
        check_data_path(out, f"key '{key}':")
    return out


def _check_range(key, value, meta, shown):
    """Check ``value``; errors show ``shown`` (what the user wrote)."""
    choices = meta["choices"]
    if choices is not None and value not in choices:
        allowed = ", ".join("null" if c is None else str(c) for c in choices)
        raise _bad(key, shown, f"allowed values are {allowed}{suggest(value, choices)}")
    values = value if isinstance(value, list) else [value]
    for v in values:
        if isinstance(v, str):
            continue
        if meta["minimum"] is not None and v < meta["minimum"]:
            raise _bad(key, shown, f"must be >= {meta['minimum']}")
        if meta["maximum"] is not None and v > meta["maximum"]:
            raise _bad(key, shown, f"must be <= {meta['maximum']}")
        if meta["gt"] is not None and v <= meta["gt"]:
            raise _bad(key, shown, f"must be > {meta['gt']}")


def coerce_schedule(key: str, value) -> dict:
    """Validate a schedule setting: a family name or a mapping with ``name`` and parameters."""
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict) or "name" not in value:
        raise _bad(key, value, "expected a schedule name or a mapping with a 'name' key")
    name = value["name"]
    if name not in SCHEDULE_FAMILIES:
        allowed = ", ".join(SCHEDULE_FAMILIES)
        raise _bad(f"{key}.name", name, f"allowed values are {allowed}{suggest(name, SCHEDULE_FAMILIES)}")
    out = default_schedule(name)
    params = SCHEDULE_FAMILIES[name]
    for param, raw in value.items():
        if param == "name":
            continue
        if param not in params:
            hint = suggest(param, params)
            known = ", ".join(params) or "none"
            raise ConfigError(f"unknown key '{key}.{param}' for schedule '{name}' (its keys: {known}){hint}")
        out[param] = _coerce_schedule_param(f"{key}.{param}", raw, params[param][1])
    _check_schedule(key, out)
    return out


def _coerce_schedule_param(key, raw, kind):
    if kind == "float?":
        return None if raw is None else _as_float(key, raw)
    if kind == "list":
        if not isinstance(raw, (list, tuple)):
            raise _bad(key, raw, "expected a list of numbers")
        return [_as_float(key, v) for v in raw]
    if kind == "dict":
        if not isinstance(raw, dict):
            raise _bad(key, raw, "expected a mapping {epoch: scale}")
        return {_as_float(key, k): _as_float(key, v) for k, v in raw.items()}
    return _SCALAR[kind](key, raw)


def _check_schedule(key, sched):
    for param in ("t_max", "warmup_steps", "transition_epochs", "step_every"):
        if param in sched and sched[param] <= 0:
            raise _bad(f"{key}.{param}", sched[param], "must be > 0")
    if sched["name"] == "warmup_piecewise_decay":
        bounds = sched["boundaries"]
        if bounds != sorted(bounds):
            raise _bad(f"{key}.boundaries", bounds, "must be increasing")
        if not 0 <= sched["warmup_ratio"] < 1:
            raise _bad(f"{key}.warmup_ratio", sched["warmup_ratio"], "must be in [0, 1)")
    if sched["name"] == "cosine_ramp_step_increase" and sched["ramp_end"] <= sched["ramp_start"]:
        raise _bad(f"{key}.ramp_end", sched["ramp_end"], "must be > ramp_start")
    for param, lo, hi in (("gamma", 0.0, 1.0), ("end_factor", 0.0, 1.0), ("start_factor", 0.0, 1.0),
                          ("step_up", 0.0, 1.0), ("pct_start", 0.0, 1.0)):
        if param in sched and not lo < sched[param] <= hi:
            raise _bad(f"{key}.{param}", sched[param], f"must be in ({lo:g}, {hi:g}]")
    for param in ("power", "upper_bound", "step_size", "div_factor", "final_div_factor"):
        if sched.get(param) is not None and sched[param] <= 0:
            raise _bad(f"{key}.{param}", sched[param], "must be > 0")


def check_budget_schedule(cfg: dict) -> None:
    """HyperbolicLR's preconditions, with the keys a user edits: U >= N and eta_min < lr."""
    sched = cfg["lr_scheduler"]
    if sched["name"] not in HYPERBOLIC_FAMILIES:
        return
    if sched["upper_bound"] < cfg["total_epochs"]:
        raise ConfigError(f"lr_scheduler.upper_bound={sched['upper_bound']:g} must be >= total_epochs="
                          f"{cfg['total_epochs']:g}: HyperbolicLR's U bounds the epoch budget N")
    if sched["eta_min"] >= cfg["learning_rate"]:
        raise ConfigError(f"lr_scheduler.eta_min={sched['eta_min']:g} must be below learning_rate="
                          f"{cfg['learning_rate']:g}: a {sched['name']} schedule decays to it")


def check_combinations(cfg: dict) -> None:
    """Cross-key rules that the reference enforces (or that would silently misbehave)."""
    check_budget_schedule(cfg)
    if cfg.get("data_parallel") and (cfg["dataset"] in TRANSLATION_DATASETS or cfg["noise"] != "minibatch"
                                     or cfg["optimizer"] in KRONECKER_OPTIMIZERS):
        raise ConfigError("data_parallel=true shards image or digits batches of the plain, SAM and LLQR steps; it "
                          "is not available for translation, noise studies or Kronecker optimizers")
    if cfg.get("train_fraction", 1.0) < 1.0 and cfg["dataset"] not in ("digits", "mnist", "cifar10", "cifar100"):
        raise ConfigError(f"train_fraction={cfg['train_fraction']} subsets in-memory datasets only (digits, cifar10, "
                          f"cifar100), not {cfg['dataset']}")
    sam = cfg["sam_mode"]
    if cfg["noise"] != "minibatch":
        if cfg["optimizer"] not in ("sgd", "polyak") or cfg["use_preconditioner"] or sam is not None:
            raise ConfigError(f"noise={cfg['noise']} is a study of plain SGD's gradient noise: use optimizer=sgd or "
                              f"polyak, use_preconditioner=false and no sam_mode")
        if cfg["grad_acc_steps"] != 1 or cfg["dataset"] in TRANSLATION_DATASETS:
            raise ConfigError(f"noise={cfg['noise']} needs grad_acc_steps=1 and an image or digits dataset")
    if cfg["optimizer"] in KRONECKER_OPTIMIZERS:
        if cfg["use_preconditioner"]:
            raise ConfigError(f"optimizer={cfg['optimizer']} is itself a Kronecker preconditioner: "
                              f"set use_preconditioner=false (LLQR is the alternative, not an addition)")
        if sam is not None or cfg["grad_acc_steps"] != 1 or cfg["dataset"] in TRANSLATION_DATASETS:
            raise ConfigError(f"optimizer={cfg['optimizer']} runs without sam_mode, with grad_acc_steps=1, "
                              f"on image or digits data")
    if sam in ("base_sam", "base_fsam", "past_fsam", "asam"):
        if cfg["sam_use_preconditioner_on_update"] and not cfg["use_preconditioner"]:
            raise ConfigError(
                f"sam_mode={sam} with sam_use_preconditioner_on_update=true needs use_preconditioner=true "
                "(got use_preconditioner=false): the outer update would apply an unfitted P. For the LLQR-off "
                "toggle set use_preconditioner=false sam_use_preconditioner_on_update=false perturb_mode=ema_grad"
            )
    if sam in ("asam", "fisher_sam"):
        # these modes build their own scaled perturbation; D(v)'s transform and norm do not apply
        for key, needed in (("perturb_mode", "ema_grad"), ("norm_mode", "euclidean")):
            if cfg[key] != needed:
                raise ConfigError(
                    f"sam_mode={sam} requires {key}={needed} (got {key}={cfg[key]}); "
                    f"perturb_mode and norm_mode only shape the base_sam/base_fsam/past_fsam perturbation"
                )
    if cfg["llqr_batch_update_mode"] == "chunked_lqr_segment":
        if cfg["llqr_batch_update_chunk_size"] is None:
            raise ConfigError(
                "llqr_batch_update_mode=chunked_lqr_segment needs llqr_batch_update_chunk_size (e.g. 128)"
            )
        if cfg["llqr_operator_mode"] != "cached_exact":
            raise ConfigError("llqr_batch_update_mode=chunked_lqr_segment requires llqr_operator_mode=cached_exact")
    if cfg["llqr_second_order_mode"] == "sample_separable_exact" and cfg["llqr_second_order_chunk_size"] is None:
        raise ConfigError(
            "llqr_second_order_mode=sample_separable_exact needs llqr_second_order_chunk_size (e.g. 32)"
        )
    if len(cfg["adam_betas"]) != 2 or not all(0 <= b < 1 for b in cfg["adam_betas"]):
        raise _bad("adam_betas", cfg["adam_betas"], "expected two values in [0, 1)")
    translation = cfg["dataset"] in TRANSLATION_DATASETS
    if translation and cfg["model"] != "transformer_iwslt":
        raise ConfigError(f"dataset {cfg['dataset']} needs model=transformer_iwslt (got {cfg['model']})")
    if cfg["model"] == "transformer_iwslt" and not translation:
        raise ConfigError(f"model transformer_iwslt needs a translation dataset "
                          f"({', '.join(TRANSLATION_DATASETS)}; got {cfg['dataset']})")
    if translation and cfg["max_tokens"] is None:
        raise ConfigError(f"dataset {cfg['dataset']} is batched by tokens: set max_tokens (the reference uses 16384)")
    if cfg["embed_dim"] % cfg["attention_heads"]:
        raise ConfigError(f"attention_heads={cfg['attention_heads']} must divide embed_dim={cfg['embed_dim']}")
    if translation and cfg["grad_acc_steps"] != 1:
        raise ConfigError("translation batches differ in shape, so grad_acc_steps must be 1 with a translation dataset")
    check_modular(cfg)


def check_modular(cfg: dict) -> None:
    """The grokking transformer reads the modular-arithmetic tokens, and only it can."""
    modular = cfg["dataset"] in MODULAR_DATASETS
    if modular != (cfg["model"] == "grok_transformer"):
        raise ConfigError(f"model grok_transformer and the modular datasets ({', '.join(MODULAR_DATASETS)}) go "
                          f"together (got model={cfg['model']}, dataset={cfg['dataset']})")
    if cfg["model"] == "grok_transformer" and cfg["grok_dim"] % 4:
        raise ConfigError(f"grok_dim={cfg['grok_dim']} must be a multiple of the grok_transformer's 4 heads")


# --- runnability: what the runner would refuse at job time, refused before a job is queued -------

# Models that pool a 32x32 image down to nothing before their head: not for digits (8x8) or mnist (28x28).
LARGE_IMAGE_MODELS = ("vgg16bn", "vgg16", "vgg19", "wide_resnet28x10", "pyramidnet110")
SMALL_IMAGE_DATASETS = {"digits": "8x8", "mnist": "28x28"}
# Flattened input size and classes of the image datasets (the loaders' (H, W, C) and labels).
_INPUT_SIZE = {"digits": 8 * 8, "mnist": 28 * 28, "cifar10": 32 * 32 * 3, "cifar100": 32 * 32 * 3,
               "imagenet": 224 * 224 * 3}
_CLASSES = {"cifar100": 100, "imagenet": 1000}
EXACT_MAX_PARAMS = 4096  # llqr.optim.structures.EXACT_MAX_PARAMS: the dense curvature and its inverse, 2 x 64 MiB
# Image models with far more than EXACT_MAX_PARAMS parameters at every size the config allows (the
# smallest, simple_cnn on digits, has 133,354).
_LARGE_MODELS = ("resnet18", "resnet50", "vgg16bn", "wide_resnet28x10", "pyramidnet110", "preresnet32", "vgg16",
                 "vgg19", "simple_cnn", "simple_vit", "vit_ti16")


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
    llqr.workflow.job_checks, which knows them). ``cfg``: a RunConfig or its dict, as the job gets it (after llqr.workflow.matrix.normalise
    in the workflow). ``devices``: the job's GPUs where known (data_parallel must split its batches
    evenly over them). JAX-free; the runner calls it before loading any data."""
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
        for key in ("batch_size", "precond_batch_size") if llqr else ("batch_size",):
            if cfg[key] % devices:
                raise ConfigError(f"data_parallel: {key}={cfg[key]} does not split evenly over the job's {devices} "
                                  f"GPUs; use a multiple of {devices} or data_parallel=false")


def _check_model(cfg: dict) -> None:
    """What llqr.models.build_model and the models refuse for the config's model and dataset."""
    model, dataset = cfg["model"], cfg["dataset"]
    if model in LARGE_IMAGE_MODELS and dataset in SMALL_IMAGE_DATASETS:
        raise ConfigError(f"model={model} needs images of at least 32x32 (cifar10, cifar100, imagenet); "
                          f"dataset={dataset} has {SMALL_IMAGE_DATASETS[dataset]} images")
    if model == "vgg16bn" and cfg["dropout_rate"]:
        raise ConfigError(f"dropout_rate={cfg['dropout_rate']}: vgg16bn's two dropouts are fixed at the "
                          f"reference's 0.5; leave dropout_rate at 0")
    if model == "preresnet32" and cfg["norm"] == "none":
        raise ConfigError("preresnet32 needs norm=bn or norm=gn (norm=none is for vgg16/vgg19)")
    if model == "si_mlp" and not cfg["mlp_hidden"]:
        raise ConfigError("mlp_hidden=[]: si_mlp needs at least one hidden layer (its head is fixed)")
