"""A schedule-only surface (``kind: schedules``) checked: the HyperbolicLR study's schedules drawn from
their formulas at several epoch budgets, with no training cells.

Each schedule is named by the study's code (N, P, C, ... WC); its settings are the family's defaults
with ``schedule_params`` on top, checked by the run config's own schedule checks at every budget,
so the figure shows exactly what a run with that ``lr_scheduler`` would get. Pure Python (no JAX).
"""

from __future__ import annotations

import math

from ..config.errors import ConfigError
from ..config.schedule_families import STUDY_CODES
from ..config.validate import check_budget_schedule, coerce_schedule
from .surface_spec import check_unique, surface_error

DEFAULT_BUDGETS = (50, 100, 150, 200)  # the study's epoch budgets
DEFAULT_AT_EPOCHS = (0, 10, 25, 49)
# Keys of a training surface that mean nothing without cells.
CELL_KEYS = ("presets", "seeds", "axes", "rules", "tune", "table", "budget_axis", "panels", "sweep_axis",
             "metric", "metrics", "bar_axis")


def _positive(name: str, key: str, value, integer: bool = False):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if ok and integer:
        ok = float(value) == int(value)
    if not ok:
        raise surface_error(name, f"{key}: {value!r} must be a positive {'whole ' if integer else ''}number")
    return int(value) if integer else float(value)


def parse_schedules(name: str, spec: dict) -> dict:
    """The checked spec of a ``kind: schedules`` surface, as the report reads it:
    {codes, settings: {code: lr_scheduler mapping}, budgets, learning_rate, steps_per_epoch, at_epochs}."""
    stray = [k for k in CELL_KEYS if spec.get(k) is not None]
    if stray:
        raise surface_error(name, f"kind schedules has no training cells; remove {', '.join(stray)}")
    codes = list(spec.get("schedules") or STUDY_CODES)
    for code in codes:
        if code not in STUDY_CODES:
            raise surface_error(name, f"unknown schedule code {code!r} (the study's: {', '.join(STUDY_CODES)})")
    check_unique(name, "schedule code", codes)
    budgets = [_positive(name, "budgets", b, integer=True) for b in spec.get("budgets") or DEFAULT_BUDGETS]
    check_unique(name, "budget", budgets)
    lr = _positive(name, "learning_rate", spec.get("learning_rate", 1.0))
    spe = _positive(name, "steps_per_epoch", spec.get("steps_per_epoch", 1), integer=True)
    at_epochs = list(spec.get("at_epochs") or DEFAULT_AT_EPOCHS)
    for e in at_epochs:
        if isinstance(e, bool) or not isinstance(e, int) or e < 0:
            raise surface_error(name, f"at_epochs: {e!r} must be a whole number >= 0")
    params = spec.get("schedule_params") or {}
    if not isinstance(params, dict):
        raise surface_error(name, "schedule_params must map schedule codes to {param: value}")
    for code in params:
        if code not in codes:
            raise surface_error(name, f"schedule_params.{code}: not one of this surface's schedules "
                                      f"({', '.join(codes)})")
    settings = {}
    for code in codes:
        key = f"schedule_params.{code}"
        try:
            setting = coerce_schedule(key, {**dict(params.get(code) or {}), "name": STUDY_CODES[code]})
            for budget in budgets:  # U >= N and eta_min < lr, as a run at that budget would be refused
                check_budget_schedule({"lr_scheduler": setting, "total_epochs": float(budget), "learning_rate": lr})
        except ConfigError as exc:
            raise surface_error(name, f"schedule {code}: {exc}") from None
        settings[code] = setting
    return {"codes": codes, "settings": settings, "budgets": budgets, "learning_rate": lr,
            "steps_per_epoch": spe, "at_epochs": at_epochs}
