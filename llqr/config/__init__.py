"""Run configuration: typed fields, presets, overrides, validation (no JAX imports here)."""

from .errors import ConfigError
from .fields import FIELDS, PRECOND_KEYS, SAM_KEYS, RunConfig
from .presets import apply_overrides, build_config, list_presets, load_preset, parse_overrides, presets_dir, resolve
from .safety import check_path_name
from .schedule_families import SCHEDULE_FAMILIES, SCHEDULE_KEYS

__all__ = [
    "FIELDS",
    "PRECOND_KEYS",
    "SAM_KEYS",
    "RunConfig",
    "ConfigError",
    "check_path_name",
    "SCHEDULE_FAMILIES",
    "SCHEDULE_KEYS",
    "apply_overrides",
    "build_config",
    "list_presets",
    "load_preset",
    "parse_overrides",
    "presets_dir",
    "resolve",
]
