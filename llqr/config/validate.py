"""Coercion and validation of run-config values, with errors that say how to fix them.

Value and type checks and the cross-key rules live here; the safety of strings that become paths
or arguments is ``llqr.config.safety``, the runner's config-only refusals ``llqr.config.runnable``
(both importable from here, as before)."""

from __future__ import annotations

import math

from .errors import ConfigError, suggest
from .families import (
    BATCHNORM_MODELS,
    GRAPH_DATASETS,
    IN_MEMORY_DATASETS,
    KRONECKER_OPTIMIZERS,
    MODULAR_DATASETS,
    NORM_KEY_MODELS,
    OPERATOR_MODELS,
    REGRESSION_DATASETS,
    REGRESSION_LOSSES,
    TRANSLATION_DATASETS,
)
from .fields import FIELDS
from .runnable import check_runnable  # noqa: F401 (importable from here, as before)
from .safety import (  # noqa: F401 (importable from here, as before)
    SHELL_METACHARACTERS,
    check_data_path,
    check_name,
    check_path_name,
    check_safe_text,
)
from .schedule_families import HYPERBOLIC_FAMILIES, SCHEDULE_FAMILIES, default_schedule


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
    if sched["name"] == "svag_triangle" and (not sched["heights"] or min(sched["heights"]) <= 0):
        raise _bad(f"{key}.heights", sched["heights"], "must be a non-empty list of positive numbers")


def check_budget_schedule(cfg: dict) -> None:
    """HyperbolicLR's preconditions, with the keys a user edits: U >= N and eta_min < lr; the SVAG
    triangle's whole cycles."""
    sched = cfg["lr_scheduler"]
    if sched["name"] == "svag_triangle":
        cycles, n = len(sched["heights"]), cfg["total_epochs"]
        if n != int(n) or int(n) % (2 * cycles):
            raise ConfigError(f"total_epochs={n:g} with lr_scheduler svag_triangle of {cycles} cycles: the epoch "
                              f"budget must be a whole multiple of 2 x {cycles} (the study asserts it)")
    if sched["name"] not in HYPERBOLIC_FAMILIES:
        return
    if sched["upper_bound"] < cfg["total_epochs"]:
        raise ConfigError(f"lr_scheduler.upper_bound={sched['upper_bound']:g} must be >= total_epochs="
                          f"{cfg['total_epochs']:g}: HyperbolicLR's U bounds the epoch budget N")
    if sched["eta_min"] >= cfg["learning_rate"]:
        raise ConfigError(f"lr_scheduler.eta_min={sched['eta_min']:g} must be below learning_rate="
                          f"{cfg['learning_rate']:g}: a {sched['name']} schedule decays to it")


def check_graph(cfg: dict) -> None:
    """A graph dataset is one example trained whole by the GCN (llqr.data.cora): batch_size=1, no
    accumulation, SVAG or noisy GD; the GCN reads nothing else."""
    graph, gcn = cfg["dataset"] in GRAPH_DATASETS, cfg["model"] == "gcn"
    if graph != gcn:
        raise ConfigError(f"model={cfg['model']} with dataset={cfg['dataset']}: model=gcn trains on the graph "
                          f"datasets ({', '.join(GRAPH_DATASETS)}) and they train only model=gcn")
    if graph and (cfg["batch_size"] != 1 or cfg["grad_acc_steps"] != 1 or cfg["noise"] != "minibatch"
                  or (cfg["use_preconditioner"] and cfg["precond_batch_size"] != 1)):
        raise ConfigError(f"dataset={cfg['dataset']} is one graph, each step trains on all of it: set batch_size=1 "
                          f"(got {cfg['batch_size']}), grad_acc_steps=1, noise=minibatch and, with the "
                          f"preconditioner, precond_batch_size=1")


def check_combinations(cfg: dict) -> None:
    """Cross-key rules that the reference enforces (or that would silently misbehave)."""
    check_budget_schedule(cfg)
    if cfg.get("data_parallel") and (cfg["dataset"] in TRANSLATION_DATASETS or cfg["noise"] == "svag"
                                     or cfg["optimizer"] in KRONECKER_OPTIMIZERS):
        raise ConfigError("data_parallel=true shards image or digits batches of the plain, SAM, LLQR and noisy-GD "
                          "steps; it is not available for translation, SVAG or Kronecker optimizers")
    check_noise_study(cfg)
    check_graph(cfg)
    check_regression(cfg)
    for key in ("train_fraction", "test_fraction"):
        if cfg.get(key, 1.0) < 1.0 and cfg["dataset"] not in IN_MEMORY_DATASETS:
            raise ConfigError(f"{key}={cfg[key]} subsets in-memory datasets only "
                              f"({', '.join(IN_MEMORY_DATASETS)}), not {cfg['dataset']}")
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


def uses_batchnorm(cfg: dict) -> bool:
    """Whether the config's model normalises with BatchNorm batch statistics in training mode."""
    return cfg["model"] in BATCHNORM_MODELS or (cfg["model"] in NORM_KEY_MODELS and cfg["norm"] == "bn")


def check_noise_study(cfg: dict) -> None:
    """The noisy-GD chunking and the noise-statistics window."""
    chunk, n = cfg.get("noisy_gd_chunk"), cfg.get("noisy_gd_examples")
    if cfg["noise"] == "noisy_gd" and chunk is not None:
        if n is not None and n % chunk:
            raise ConfigError(f"noisy_gd_chunk={chunk} must divide noisy_gd_examples={n}: every chunk of the fixed "
                              f"subset has the same size (e.g. {_divisor_near(n, chunk)})")
        if uses_batchnorm(cfg) and chunk != n:
            raise ConfigError(f"noisy_gd_chunk={chunk} with model={cfg['model']} (BatchNorm): each chunk would be "
                              f"normalised with its own batch statistics, so the chunked step would not be the "
                              f"whole-subset step. Use a GroupNorm model (norm=gn, as the SVAG study's noisy-GD runs) "
                              f"or noisy_gd_chunk=null")
    start, end = cfg.get("noise_stats_from_epoch"), cfg.get("noise_stats_to_epoch")
    if end is not None and (start is None or end <= start):
        raise ConfigError(f"noise_stats_to_epoch={end} ends the window that starts at noise_stats_from_epoch="
                          f"{start}: set noise_stats_from_epoch below it")


def _divisor_near(n: int, chunk: int) -> int:
    """The divisor of n closest to chunk (a suggestion)."""
    divisors = [d for d in range(1, int(math.isqrt(n)) + 1) if n % d == 0]
    return min({*divisors, *(n // d for d in divisors)}, key=lambda d: (abs(d - chunk), d))


def check_modular(cfg: dict) -> None:
    """The grokking transformer reads the modular-arithmetic tokens, and only it can."""
    modular = cfg["dataset"] in MODULAR_DATASETS
    if modular != (cfg["model"] == "grok_transformer"):
        raise ConfigError(f"model grok_transformer and the modular datasets ({', '.join(MODULAR_DATASETS)}) go "
                          f"together (got model={cfg['model']}, dataset={cfg['dataset']})")
    if cfg["model"] == "grok_transformer" and cfg["grok_dim"] % 4:
        raise ConfigError(f"grok_dim={cfg['grok_dim']} must be a multiple of the grok_transformer's 4 heads")


def check_regression(cfg: dict) -> None:
    """A regression loss goes with a regression dataset (and cross_entropy with every other), and
    lstm_seq2seq with the oscillation windows. What reads class log-probabilities is refused on float
    targets: the LLQR fit (its divergences), the Kronecker optimizers' factors, label smoothing, the
    noise studies, the step accuracy."""
    regression = cfg["dataset"] in REGRESSION_DATASETS
    if regression != (cfg["loss"] in REGRESSION_LOSSES):
        want = f"loss={' or '.join(REGRESSION_LOSSES)}" if regression else "loss=cross_entropy"
        raise ConfigError(f"loss={cfg['loss']} with dataset={cfg['dataset']}: "
                          f"{'its float targets' if regression else 'its class labels'} need {want} "
                          f"(regression datasets: {', '.join(REGRESSION_DATASETS)})")
    if (cfg["model"] == "lstm_seq2seq") != (cfg["dataset"] == "oscillation"):
        raise ConfigError(f"model lstm_seq2seq and dataset oscillation go together (got model={cfg['model']}, "
                          f"dataset={cfg['dataset']})")
    if (cfg["model"] in OPERATOR_MODELS) != (cfg["dataset"] == "integral"):
        raise ConfigError(f"models {', '.join(OPERATOR_MODELS)} and dataset integral go together (got "
                          f"model={cfg['model']}, dataset={cfg['dataset']})")
    if not regression:
        return
    refused = {"use_preconditioner": cfg["use_preconditioner"], "optimizer": cfg["optimizer"] in KRONECKER_OPTIMIZERS,
               "label_smoothing": cfg["label_smoothing"] > 0, "noise": cfg["noise"] != "minibatch",
               "noise_stats_from_epoch": cfg.get("noise_stats_from_epoch") is not None,
               "log_step_accuracy": cfg.get("log_step_accuracy", False)}
    bad = [key for key, on in refused.items() if on]
    if bad:
        raise ConfigError(f"loss={cfg['loss']} (regression) with {', '.join(f'{k}={cfg[k]}' for k in bad)}: these "
                          f"read class log-probabilities or accuracies; set use_preconditioner=false, a "
                          f"non-Kronecker optimizer, label_smoothing=0, noise=minibatch, noise_stats_from_epoch=null "
                          f"and log_step_accuracy=false")
