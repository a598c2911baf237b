"""Search spaces: config keys (or ``<schedule>.<param>``) -> a range or a list of choices.

A space is plain data, written in the workflow config::

    learning_rate: {low: 1.0e-4, high: 5.0e-2, log: true}
    lr_scheduler.upper_bound: {choices: [25, 30, 35]}
    lr_scheduler.power: {low: 0.5, high: 3.0}
    lr_scheduler.step_size: {low: 1, high: 10, int: true}

Pure Python (no Optuna import) so the Snakefile can check a space while it parses.
"""

from __future__ import annotations

from ..config import ConfigError

_RANGE_KEYS = {"low", "high", "log", "int"}
# a surface's tune.sampler: Optuna's TPESampler (the default) or RandomSampler (the SINGD study's random search)
SAMPLERS = ("tpe", "random")


def check_space(space: dict, where: str) -> dict:
    """The space with every entry checked and normalised; a clear ConfigError otherwise."""
    if not isinstance(space, dict):
        raise ConfigError(f"{where}: a search space maps config keys to {{low, high[, log, int]}} or {{choices}}")
    out = {}
    for key, dist in space.items():
        name = f"{where}: search space entry '{key}'"
        if not isinstance(dist, dict):
            raise ConfigError(f"{name} must be a mapping, got {dist!r}")
        if "choices" in dist:
            if set(dist) != {"choices"} or not isinstance(dist["choices"], list) or not dist["choices"]:
                raise ConfigError(f"{name}: 'choices' must be a non-empty list and stand alone")
            out[key] = {"choices": list(dist["choices"])}
            continue
        unknown = set(dist) - _RANGE_KEYS
        if unknown or not {"low", "high"} <= set(dist):
            raise ConfigError(f"{name}: expected {{low, high[, log, int]}} or {{choices}}, got keys {sorted(dist)}")
        low, high = dist["low"], dist["high"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low >= high:
            raise ConfigError(f"{name}: need numbers low < high, got low={low!r}, high={high!r}")
        if dist.get("log") and low <= 0:
            raise ConfigError(f"{name}: a log range needs low > 0, got {low!r}")
        is_int = bool(dist.get("int", False))
        out[key] = {"low": int(low) if is_int else float(low), "high": int(high) if is_int else float(high),
                    "log": bool(dist.get("log", False)), "int": is_int}
    return out


def corners(space: dict) -> list[dict]:
    """Low-end and high-end assignments, for checking a space against the config at parse time."""
    lo = {k: d["choices"][0] if "choices" in d else d["low"] for k, d in space.items()}
    hi = {k: d["choices"][-1] if "choices" in d else d["high"] for k, d in space.items()}
    return [lo, hi]


def suggest(trial, space: dict) -> dict:
    """Draw one assignment from an Optuna trial (parameter names are the config keys)."""
    out = {}
    for key, dist in space.items():
        if "choices" in dist:
            out[key] = trial.suggest_categorical(key, dist["choices"])
        elif dist["int"]:
            out[key] = trial.suggest_int(key, dist["low"], dist["high"], log=dist["log"])
        else:
            out[key] = trial.suggest_float(key, dist["low"], dist["high"], log=dist["log"])
    return out
