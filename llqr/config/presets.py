"""Presets (YAML under config/presets/) and ``key=value`` overrides, resolved into a RunConfig."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from .fields import FIELDS, RunConfig
from .keyspec import field_default
from .schedule_families import SCHEDULE_KEYS
from .validate import (
    ConfigError,
    check_combinations,
    check_path_name,
    check_safe_text,
    coerce_schedule,
    coerce_value,
    suggest,
    unknown_key,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
PRESET_META_KEYS = ("inherits", "description")


def presets_dir() -> Path:
    """``$LLQR_PRESETS_DIR`` if set, else the repository's ``config/presets``."""
    return Path(os.environ.get("LLQR_PRESETS_DIR", REPO_ROOT / "config" / "presets"))


def list_presets(directory: Path | None = None) -> list[str]:
    directory = Path(directory or presets_dir())
    return sorted(p.stem for p in directory.glob("*.yaml") if not p.stem.startswith("_"))


def load_preset(name: str, directory: Path | None = None, _seen: tuple = ()) -> dict:
    """The preset's values (after ``inherits``), keys checked, values not yet coerced."""
    directory = Path(directory or presets_dir())
    check_safe_text(name, "preset", allow_space=False)
    path = directory / f"{check_path_name(name, 'preset', hidden_ok=bool(_seen))}.yaml"
    if not path.is_file():
        known = list_presets(directory)
        raise ConfigError(
            f"unknown preset '{name}'{suggest(name, known)}; presets in {directory}: {', '.join(known) or 'none'}"
        )
    if name in _seen:
        raise ConfigError(f"preset '{name}' inherits from itself: {' -> '.join(_seen + (name,))}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"preset '{name}' ({path}) is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"preset '{name}' ({path}) must be a mapping of config keys")
    parent = raw.pop("inherits", None)
    raw.pop("description", None)
    for key in raw:
        if key not in FIELDS:
            raise unknown_key(key, where=f"preset '{name}' ({path})")
    base = load_preset(parent, directory, _seen + (name,)) if parent else {}
    return apply_overrides(base, raw)


def parse_overrides(items: list[str]) -> dict:
    """``["lr=0.1", "lr_scheduler.t_max=100"]`` -> ``{"lr": 0.1, ...}`` (values read as YAML)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, text = item.split("=", 1)
        key = key.strip().lstrip("+")
        if not key:
            raise ConfigError(f"override '{item}' has an empty key")
        try:
            out[key] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            out[key] = text
    return out


def apply_overrides(base: dict, overrides: dict) -> dict:
    """Merge overrides into base. A schedule key given a name switches family (params reset);
    ``<schedule>.<param>`` edits one parameter of the current family."""
    out = {k: v for k, v in base.items()}
    dotted = []
    for key, value in overrides.items():
        if "." in key:
            dotted.append((key, value))
            continue
        if key not in FIELDS:
            raise unknown_key(key)
        out[key] = value
    for key, value in dotted:
        group, param = key.split(".", 1)
        if group not in SCHEDULE_KEYS:
            if group in FIELDS:
                raise ConfigError(f"key '{group}' has no sub-keys; use {group}=<value>")
            raise unknown_key(group)
        current = out.get(group, FIELDS[group].default_factory())
        current = coerce_schedule(group, current)
        current[param] = value
        out[group] = current
    return out


def build_config(values: dict) -> RunConfig:
    """Coerce and validate every value; fill defaults; check cross-key rules."""
    return RunConfig(**resolve_values(values))


def resolve_values(values: dict) -> dict:
    """``build_config(values).to_dict()`` without the dataclass, in field order: the workflow's matrix
    resolves thousands of positions on every Snakemake start."""
    coerced = {key: _coerce(key, value) for key, value in values.items()}
    out = {name: coerced[name] if name in coerced else field_default(f) for name, f in FIELDS.items()}
    check_combinations(out)
    return out


_SCALARS = (str, int, float, bool, type(None))
_COERCED: dict = {}  # (key, type, value) -> coerced scalar: positions repeat the same few values


def _coerce(key: str, value):
    """``coerce_value``, remembered for scalars (a pure function of key and value; lists and
    schedules are converted afresh so that no two configs share a mutable value)."""
    if not isinstance(value, _SCALARS):
        return coerce_value(key, value)
    memo = (key, type(value), value)
    if memo not in _COERCED:
        _COERCED[memo] = coerce_value(key, value)  # a refusal raises and is not remembered
    return _COERCED[memo]


def resolve(preset: str | None, overrides: dict | None = None, directory: Path | None = None) -> RunConfig:
    """Preset + overrides -> validated RunConfig."""
    base = load_preset(preset, directory) if preset else {}
    merged = apply_overrides(base, overrides or {})
    if preset:
        merged["preset"] = preset
    return build_config(merged)
