"""Tuning studies: a surface's ``tune`` block checked, and the Optuna study that tunes each of its
positions (the config at the tuning budget and seed, and the search space that applies there).

With ``budget_axis`` one study serves every budget of a position (tuned at the axis's first
variant, the HyperbolicLR study's protocol); without it each position is tuned at its own
settings (the SINGD study's random search), so the study's config is the position's at the
surface's first seed."""

from __future__ import annotations

from dataclasses import dataclass

from ..config.errors import ConfigError
from ..config.hashing import canonical_json
from ..config.presets import apply_overrides, resolve_values
from ..tune.space import SAMPLERS, check_space, corners
from .cells import position_overrides, resolve_cached, rule_applies, rule_params, study_id
from .job_checks import check_job
from .surface_spec import METRICS, check_conditions, surface_error


@dataclass(frozen=True)
class Study:
    """One Optuna study: the config it tunes (at the tuning budget and seed) and its search space."""

    id: str  # <preset>/<diff>, like a cell id without the seed
    preset: str
    config: dict
    space: dict
    trials: int
    seed: int  # the sampler's seed
    metric: str
    mode: str
    sampler: str = "tpe"  # tpe | random (llqr.tune.study.SAMPLERS)

    def to_dict(self) -> dict:
        """The spec; ``sampler`` only when it is not the default tpe, so TPE studies keep their spec and hash."""
        out = {"id": self.id, "preset": self.preset, "config": rule_params(self.config), "space": self.space,
               "trials": self.trials, "seed": self.seed, "metric": self.metric, "mode": self.mode}
        return out if self.sampler == "tpe" else {**out, "sampler": self.sampler}

    @property
    def spec_json(self) -> str:
        """The tune rule's params: editing the space, budget or trial count makes only this study stale."""
        return canonical_json(self.to_dict())


def parse_tune(name: str, tune, axes: dict, presets: list, seeds: list) -> dict | None:
    """The surface's ``tune`` block, checked: which axis is the budget (None: none, each position is tuned at its
    own settings), trials, sampler and its seed, objective, space."""
    if not tune:
        return None
    if not isinstance(tune, dict):
        raise surface_error(name, "'tune' must be a mapping")
    known = {"budget_axis", "trials", "seed", "metric", "space", "rules", "sampler"}
    if set(tune) - known:
        raise surface_error(name, f"unknown keys in 'tune': {sorted(set(tune) - known)} (allowed: {sorted(known)})")
    axis = tune.get("budget_axis")
    if axis is not None and (not isinstance(axis, str) or axis not in axes):
        raise surface_error(name, f"tune.budget_axis must name an axis or be left out (got {axis!r}; "
                                  f"axes: {', '.join(axes) or 'none'})")
    trials = tune.get("trials")
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise surface_error(name, f"tune.trials must be a positive integer, got {trials!r}")
    metric = tune.get("metric", "test_loss")
    if metric not in METRICS:
        raise surface_error(name, f"unknown tune.metric '{metric}' (allowed: {', '.join(METRICS)})")
    sampler = tune.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise surface_error(name, f"unknown tune.sampler {sampler!r} (allowed: {', '.join(SAMPLERS)})")
    rules = tune.get("rules") or []
    check_conditions(name, rules, axes, presets)
    for rule in rules:
        if axis is not None and axis in (rule.get("when") or {}):
            raise surface_error(name, f"tune rules cannot depend on the budget axis '{axis}': one study serves "
                                      f"every budget")
    return {"budget_axis": axis, "trials": trials, "seed": int(tune.get("seed", 42)), "metric": metric,
            "space": check_space(tune.get("space") or {}, f"surface '{name}' tune.space"), "rules": rules,
            "tuning_seed": seeds[0], "sampler": sampler}


_CORNERS_OK: set = set()  # (config, space) pairs already checked: a study's positions repeat them


def check_corners(config: dict, space: dict) -> None:
    """Every trial a study can draw must be a valid, runnable config: both ends of every range and
    every choice of every categorical entry (on top of the low corner)."""
    key = canonical_json([config, space])
    if key in _CORNERS_OK:
        return
    low, *rest = corners(space)
    assignments = [low, *rest] + [{**low, name: choice} for name, dist in space.items()
                                  for choice in dist.get("choices", [])[1:-1]]
    for assignment in assignments:
        check_job(resolve_values(apply_overrides(config, assignment)))
    if len(_CORNERS_OK) > 100_000:
        _CORNERS_OK.clear()
    _CORNERS_OK.add(key)


def study_for(name, tune, axes, combo, rules, preset, base_values, base, studies, where, cache):
    """The study that tunes this position: its config at the tuning budget (the budget axis's first
    variant; without a budget axis, the position's own) and seed (the surface's first); None when no
    space entry applies to the position."""
    axis_names = list(axes)
    labels = {a: lab for a, (lab, _) in zip(axis_names, combo)}
    space = dict(tune["space"])
    for rule in tune["rules"]:
        if rule_applies(rule.get("when") or {}, labels, preset):
            space.update(check_space(rule.get("space") or {}, f"surface '{name}' tune.rules"))
    if not space:
        return None
    at_budget = list(combo)
    if tune["budget_axis"] is not None:
        at_budget[axis_names.index(tune["budget_axis"])] = axes[tune["budget_axis"]][0]
    tuning_labels = {a: lab for a, (lab, _) in zip(axis_names, at_budget)}
    try:
        overrides = position_overrides(at_budget, rules, tuning_labels, preset)
        config, _settings = resolve_cached(cache, base_values, base, overrides, tune["tuning_seed"], preset)
        check_corners(config, space)
    except ConfigError as exc:
        raise surface_error(name, f"tuning study for preset {preset} [{where}]: {exc}") from None
    study = Study(study_id(preset, config, base), preset, config, space, tune["trials"], tune["seed"],
                  tune["metric"], METRICS[tune["metric"]], tune.get("sampler", "tpe"))
    known = studies.get(study.id)
    if known is not None and known != study:
        raise surface_error(name, f"study {study.id} is defined twice with different spaces, trials or objectives")
    studies[study.id] = study
    return study
