"""Cluster resources of a preset's jobs: the workflow config's ``resources:`` and ``cluster:`` sections.

One function shared by the Snakefile (rules' ``resources:``) and the cost preview (``llqr.plan``),
so both always agree. Resources never enter a cell's identity.
"""

from __future__ import annotations

import os

DEFAULTS = {"mem_mb": 2000, "runtime": 30, "cpus_per_task": 1, "gpu": 0}


def check_resource_presets(config: dict, known) -> None:
    """Every ``resources.presets`` entry names a preset (a typo would silently get the defaults)."""
    from ..config.validate import ConfigError, suggest

    for name in (config.get("resources") or {}).get("presets") or {}:
        if name not in known:
            raise ConfigError(f"resources.presets: unknown preset '{name}'{suggest(name, known)}; "
                              "fix or remove the entry")


def preset_resources(config: dict, preset: str, environ=None) -> dict:
    """``resources.default`` updated by ``resources.presets.<preset>``, plus the account and partition
    from ``cluster:`` or $LLQR_SLURM_ACCOUNT / $LLQR_SLURM_PARTITION."""
    environ = os.environ if environ is None else environ
    section = config.get("resources") or {}
    res = dict(section.get("default") or {})
    res.update((section.get("presets") or {}).get(preset) or {})
    cluster = config.get("cluster") or {}
    account = cluster.get("account") or environ.get("LLQR_SLURM_ACCOUNT")
    partition = cluster.get("partition") or environ.get("LLQR_SLURM_PARTITION")
    if account:
        res.setdefault("slurm_account", account)
    if partition:
        res.setdefault("slurm_partition", partition)
    return res


def resource(res: dict, key: str):
    """One resource with the workflow's default where the config sets none."""
    return res.get(key, DEFAULTS.get(key, ""))
