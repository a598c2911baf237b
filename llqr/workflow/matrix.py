"""Surfaces (presets x sweep axes x seeds) expanded into cells with stable, readable ids.

A cell id is ``<preset>/<diff>/seed<init_key>`` where ``<diff>`` lists, sorted, the resolved
values that differ from the preset, after resetting keys that cannot affect the run (the
preconditioner keys when ``use_preconditioner=false``; the SAM keys when ``sam_mode`` is null).
Two sweep entries that train the same thing therefore share one id, inside a surface or across
surfaces, and are trained once. Pure Python: no JAX, so the Snakefile parses fast.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from ..config import FIELDS, SCHEDULE_FAMILIES, ConfigError
from ..config.hashing import canonical_json, config_hash
from ..config.fields import BOOKKEEPING_KEYS, INERT_KEYS, PARAMS_OWNERS, TABLES, omitted_at_default
from ..config.presets import apply_overrides, build_config, list_presets, load_preset
from ..config.validate import check_name, check_path_name, check_safe_text
from .job_checks import check_job
from .resources import check_resource_presets
from ..tune.space import check_space, corners

# Short names used in cell ids (others appear in full).
ALIASES = {
    "use_preconditioner": "llqr",
    "sam_use_preconditioner_on_update": "sam_upd",
    "perturb_mode": "perturb",
    "perturbation_rho": "rho",
    "divergence": "div",
    "ema_decay": "ema",
    "sam_mode": "sam",
    "learning_rate": "lr",
    "lr_scheduler": "lr_sched",
    "block_structure": "block",
    "optimizer": "opt",
    "weight_decay": "wd",
    "llqr_batch_update_mode": "batch_mode",
    "llqr_batch_update_chunk_size": "chunk",
    "llqr_use_fast_paths": "fast_paths",
    "precond_batch_size": "pbs",
    "update_preconditioner_every": "every",
    "precond_steps": "psteps",
    "precond_lr": "plr",
    "total_epochs": "epochs",
}
# opt_state_bytes and ms_per_step: cost columns of the optimizer studies
METRICS = {"test_accuracy": "max", "test_loss": "min", "train_loss": "min", "train_accuracy": "max",
           "valid_bleu": "max", "test_bleu": "max", "opt_state_bytes": "min", "ms_per_step": "min",
           "noise_ratio": "max", "noise_G": "min", "noise_N": "min"}
_SAFE = "-_.=+:@"  # no ",": Snakemake's --target-jobs (how cluster jobs name their cell) splits on it
_MAX_SEGMENT = 180
SEPARATOR = "__"  # between the key=value parts of a cell id


@dataclass(frozen=True)
class Cell:
    """One training run: the unit Snakemake schedules."""

    id: str
    preset: str
    seed: int
    config: dict  # fully resolved (and normalised) run config
    study: str | None = None  # a tuning study whose best parameters the run applies on top of config
    settings: dict = field(default_factory=dict, compare=False)  # its bookkeeping keys' values (not identity)

    @property
    def config_json(self) -> str:
        """The train rule's params: what makes this cell stale when it changes."""
        return canonical_json(rule_params(self.config))


@dataclass(frozen=True)
class Study:
    """One Optuna study: the config it tunes (at the tuning budget and seed) and its search space."""

    id: str  # <preset>/<diff>, like a cell id without the seed
    preset: str
    config: dict
    space: dict
    trials: int
    seed: int  # the TPE sampler's seed
    metric: str
    mode: str

    def to_dict(self) -> dict:
        return {"id": self.id, "preset": self.preset, "config": rule_params(self.config), "space": self.space,
                "trials": self.trials, "seed": self.seed, "metric": self.metric, "mode": self.mode}

    @property
    def spec_json(self) -> str:
        """The tune rule's params: editing the space, budget or trial count makes only this study stale."""
        return canonical_json(self.to_dict())


# The keys read only for some models, datasets, optimizers or noise modes (their field's read_when).
_OWNED_KEYS = tuple(k for owner in PARAMS_OWNERS for k in TABLES.owned[owner])


def _met(alternatives: tuple, config: dict) -> bool:
    """Whether ``config`` meets a field's read_when (fields.is_read, for the keys with one)."""
    return any(all(config.get(k) in cond for k, cond in alt.items()) for alt in alternatives)


def _unread(config: dict) -> dict:
    """The keys of ``config`` that its model, dataset, optimizer or noise mode never reads."""
    return {key: config[key] for key in _OWNED_KEYS
            if key in config and not _met(TABLES.read_when[key], config)}


def rule_params(config: dict) -> dict:
    """The config without the keys its model and dataset never read (a Transformer's width in an
    MLP cell, BLEU settings in an image cell), so adding or retuning such a key re-runs only the
    cells that read it. The runner fills the dropped keys back with their (unread) defaults."""
    unread = _unread(config)
    out = {k: v for k, v in config.items() if k not in unread and k not in BOOKKEEPING_KEYS}
    # keys whose default is the behaviour cells had before the key existed (their field says
    # params_at_default=False): absent unless changed
    for key, default in omitted_at_default().items():
        if out.get(key) == default:
            out.pop(key, None)
    return out


@dataclass(frozen=True)
class Entry:
    """A cell's place in a surface: which variant of each axis, which seed."""

    cell_id: str
    preset: str
    labels: dict
    seed: int


@dataclass
class Surface:
    name: str
    title: str
    caption: str
    group: str
    metric: str
    mode: str
    axes: dict  # axis -> list of variant labels, in order
    rows: list
    columns: list
    seeds: list
    x: str = "step"  # the figure's x axis: loop step, epoch, or effective_step (SVAG: step / l)
    kind: str = "grid"  # grid: table of the metric; budget: metric vs budget + power law; slcd: curve differences
    budget_axis: str | None = None  # the axis whose labels are epoch budgets (kinds budget and slcd)
    panels: str | None = None  # the figure's panels: one per preset, or per preset and label of this axis
    entries: list = field(default_factory=list)

    @property
    def cell_ids(self) -> list[str]:
        return sorted({e.cell_id for e in self.entries})

    def to_dict(self) -> dict:
        """What the aggregation step needs, as plain JSON."""
        return {
            "name": self.name,
            "title": self.title,
            "caption": self.caption,
            "metric": self.metric,
            "mode": self.mode,
            "axes": self.axes,
            "rows": self.rows,
            "columns": self.columns,
            "seeds": self.seeds,
            "x": self.x,
            "kind": self.kind,
            "budget_axis": self.budget_axis,
            "panels": self.panels,
            "entries": [
                {"cell": e.cell_id, "preset": e.preset, "labels": e.labels, "seed": e.seed} for e in self.entries
            ],
        }


@dataclass
class Matrix:
    surfaces: dict
    cells: dict
    studies: dict = field(default_factory=dict)

    def group(self, name: str) -> list[str]:
        return [s for s, surf in self.surfaces.items() if surf.group == name]


# --- cell identity ---------------------------------------------------------------------------


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return "-".join(_fmt(v) for v in value)
    return str(value)


def _fmt_schedule(sched: dict) -> str:
    name = sched["name"]
    defaults = SCHEDULE_FAMILIES[name]
    parts = [name]
    for param in sorted(k for k in sched if k != "name"):
        if sched[param] != defaults[param][0]:
            value = sched[param]
            text = "_".join(f"{_fmt(k)}>{_fmt(v)}" for k, v in value.items()) if isinstance(value, dict) else _fmt(value)
            parts.append(f"{param}={text}")
    return ":".join(parts)


def normalise(config: dict, base: dict) -> dict:
    """Reset keys that cannot change the run to the preset's values, so equal runs share an id:
    the inert and bookkeeping keys, and every key whose field's ``read_when`` the config does not
    meet (the preconditioner's keys with it off, SAM keys of other modes, an MLP width in a CNN)."""
    out = dict(config)
    for key in (*INERT_KEYS, *BOOKKEEPING_KEYS):  # bookkeeping travels in Cell.settings instead
        out[key] = base[key]
    if (out["sam_mode"] == "fisher_sam" and out["precond_identity_scaling"] == 1.0
            and not out["block_structure"].startswith("psd-")):
        # fisher_sam never fits P and its outer update is vanilla, so P stays the identity (exactly,
        # but for the psd structures' r² + ε) and the LLQR toggle cannot change the run: both
        # settings are the LLQR-off cell
        out["use_preconditioner"] = False
    if out.get("noise") == "svag" and out.get("svag_l") == 1:  # SVAG at l = 1 is plain SGD, step for step
        out["noise"], out["svag_l"], out["svag_variant"] = base["noise"], base["svag_l"], base["svag_variant"]
    # the conditions name only keys never reset here (model, dataset, optimizer, noise,
    # use_preconditioner, sam_mode, precond_identity_scaling), so one pass over the config suffices
    unread = [key for key, alts in TABLES.read_when.items() if key in out and not _met(alts, out)]
    for key in unread:  # e.g. singd_structure in an AdamW cell
        out[key] = base[key] if key in base else out[key]
    return out


def cell_id(preset: str, config: dict, base: dict, tuned: bool = False) -> str:
    """``<preset>/<diff>/seed<n>``; a cell that applies a study's best parameters ends its diff in
    ``+tuned`` (its config holds the untuned values)."""
    middle = _diff_segment(config, base) + ("+tuned" if tuned else "")
    return f"{preset}/{middle}/seed{config['init_key']}"


def study_id(preset: str, config: dict, base: dict) -> str:
    return f"{preset}/{_diff_segment(config, base)}"


def _diff_segment(config: dict, base: dict) -> str:
    diff = {k: v for k, v in config.items() if k not in ("preset", "init_key") and v != base[k]}
    parts = []
    for key in sorted(diff, key=lambda k: ALIASES.get(k, k)):
        value = diff[key]
        text = _fmt_schedule(value) if FIELDS[key].metadata["kind"] == "schedule" else _fmt(value)
        parts.append(f"{ALIASES.get(key, key)}={text}")
    middle = quote(SEPARATOR.join(parts), safe=_SAFE) or "default"
    if len(middle) > _MAX_SEGMENT:
        middle = f"{middle[:_MAX_SEGMENT - 13]}~{config_hash(diff)}"
    return middle


# --- surfaces ----------------------------------------------------------------------------------


def _err(surface: str, msg: str) -> ConfigError:
    return ConfigError(f"surface '{surface}': {msg}")


def _check_unique(surface: str, what: str, values: list):
    seen = set()
    for v in values:
        key = canonical_json(v)
        if key in seen:
            raise _err(surface, f"duplicate {what} {v!r}")
        seen.add(key)


def _check_label(surface: str, axis: str, label: str) -> None:
    """A variant label is shown in tables and figures and named by rule conditions: no shell
    metacharacters, control characters, '/' or '..'."""
    try:
        check_safe_text(label, f"label of axis '{axis}'")
    except ConfigError as exc:
        raise _err(surface, str(exc)) from None
    if not label.strip() or "/" in label or label.strip() == "..":
        raise _err(surface, f"label of axis '{axis}' {label!r} must be non-empty, without '/' and not '..'")


def _parse_axes(name: str, axes: dict) -> dict:
    if not isinstance(axes, dict):
        raise _err(name, "'axes' must map axis names to lists of {label, set}")
    parsed = {}
    for axis, variants in axes.items():
        try:
            check_name(axis, "axis name")
        except ConfigError as exc:
            raise _err(name, str(exc)) from None
        if axis in ("preset", "seed"):
            raise _err(name, f"axis name '{axis}' is reserved")
        if not isinstance(variants, list) or not variants:
            raise _err(name, f"axis '{axis}' is an empty sweep; give at least one variant")
        out = []
        for v in variants:
            if not isinstance(v, dict) or "label" not in v:
                raise _err(name, f"axis '{axis}': each variant needs a 'label' (got {v!r})")
            label = str(v["label"])
            _check_label(name, axis, label)
            out.append((label, dict(v.get("set") or {})))
        _check_unique(name, f"label in axis '{axis}':", [lab for lab, _ in out])
        _check_unique(name, f"variant settings in axis '{axis}':", [s for _, s in out])
        parsed[axis] = out
    return parsed


def _check_conditions(name: str, rules: list, axes: dict, presets: list) -> None:
    for rule in rules:
        for axis, wanted in (rule.get("when") or {}).items():
            if axis != "preset" and axis not in axes:
                raise _err(name, f"rule condition on unknown axis '{axis}' (axes: {', '.join(axes) or 'none'})")
            labels = presets if axis == "preset" else [lab for lab, _ in axes[axis]]
            for w in wanted if isinstance(wanted, list) else [wanted]:
                if str(w) not in labels:
                    raise _err(name, f"rule condition {axis}={w!r} matches no variant (have: {', '.join(labels)})")


_KINDS = ("grid", "budget", "slcd")


def _parse_tune(name: str, tune, axes: dict, presets: list, seeds: list) -> dict | None:
    """The surface's ``tune`` block, checked: which axis is the budget, trials, sampler seed, objective, space."""
    if not tune:
        return None
    if not isinstance(tune, dict):
        raise _err(name, "'tune' must be a mapping")
    known = {"budget_axis", "trials", "seed", "metric", "space", "rules"}
    if set(tune) - known:
        raise _err(name, f"unknown keys in 'tune': {sorted(set(tune) - known)} (allowed: {sorted(known)})")
    axis = tune.get("budget_axis")
    if axis not in axes:
        raise _err(name, f"tune.budget_axis must name an axis (got {axis!r}; axes: {', '.join(axes) or 'none'})")
    trials = tune.get("trials")
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise _err(name, f"tune.trials must be a positive integer, got {trials!r}")
    metric = tune.get("metric", "test_loss")
    if metric not in METRICS:
        raise _err(name, f"unknown tune.metric '{metric}' (allowed: {', '.join(METRICS)})")
    rules = tune.get("rules") or []
    _check_conditions(name, rules, axes, presets)
    for rule in rules:
        if axis in (rule.get("when") or {}):
            raise _err(name, f"tune rules cannot depend on the budget axis '{axis}': one study serves every budget")
    return {"budget_axis": axis, "trials": trials, "seed": int(tune.get("seed", 42)), "metric": metric,
            "space": check_space(tune.get("space") or {}, f"surface '{name}' tune.space"), "rules": rules,
            "tuning_seed": seeds[0]}


def _rule_applies(when: dict, labels: dict, preset: str) -> bool:
    for axis, wanted in when.items():
        have = preset if axis == "preset" else labels.get(axis)
        options = wanted if isinstance(wanted, list) else [wanted]
        if have not in [str(o) for o in options]:
            return False
    return True


def preset_base(preset: str | None, presets_dir=None) -> tuple[dict, dict]:
    """(the preset's raw values, its fully resolved config): what cell ids are diffs against."""
    values = load_preset(preset, presets_dir) if preset else {}
    return values, build_config({**values, "preset": preset or ""}).to_dict()


def expand_surface(name: str, spec: dict, cells: dict, presets_dir=None, _cache=None, studies=None) -> Surface:
    """Expand one surface spec; add its cells to ``cells`` and its tuning studies to ``studies``
    (both shared across surfaces)."""
    _cache = {} if _cache is None else _cache
    studies = {} if studies is None else studies
    presets = spec.get("presets") or []
    if not presets:
        raise _err(name, "'presets' is empty")
    _check_unique(name, "preset", presets)
    for preset in presets:
        try:
            check_name(preset, "preset")
        except ConfigError as exc:
            raise _err(name, str(exc)) from None
    seeds = spec.get("seeds") or []
    if not seeds:
        raise _err(name, "'seeds' is empty")
    _check_unique(name, "seed", seeds)
    axes = _parse_axes(name, spec.get("axes") or {})
    rules = spec.get("rules") or []
    _check_conditions(name, rules, axes, presets)
    metric = spec.get("metric", "test_accuracy")
    if metric not in METRICS:
        raise _err(name, f"unknown metric '{metric}' (allowed: {', '.join(METRICS)})")
    table = spec.get("table") or {}
    rows = list(table.get("rows") or ["preset"])
    columns = list(table.get("columns") or [a for a in axes if a not in rows])
    layout = rows + columns
    if sorted(layout) != sorted(["preset", *axes]):
        raise _err(name, f"table rows + columns {layout} must name 'preset' and every axis ({', '.join(axes)}) once")

    surface = Surface(
        name=name,
        title=spec.get("title", name),
        caption=spec.get("caption", ""),
        group=spec.get("group", "demo"),
        metric=metric,
        mode=METRICS[metric],
        axes={a: [lab for lab, _ in vs] for a, vs in axes.items()},
        rows=rows,
        columns=columns,
        seeds=list(seeds),
        x=spec.get("x", "step"),
        kind=spec.get("kind", "grid"),
        budget_axis=spec.get("budget_axis"),
        panels=spec.get("panels"),
    )
    if surface.kind not in _KINDS:
        raise _err(name, f"unknown kind '{surface.kind}' (allowed: {', '.join(_KINDS)})")
    for key in ("budget_axis", "panels"):
        if getattr(surface, key) is not None and getattr(surface, key) not in axes:
            raise _err(name, f"{key} '{getattr(surface, key)}' is not an axis (axes: {', '.join(axes) or 'none'})")
    if surface.kind != "grid" and surface.budget_axis is None:
        raise _err(name, f"kind {surface.kind} needs budget_axis: the axis whose labels are epoch budgets")
    if surface.budget_axis is not None:
        for label, _ in axes[surface.budget_axis]:
            try:
                float(label)
            except ValueError:
                raise _err(name, f"budget axis '{surface.budget_axis}': label {label!r} is not a number") from None
    tune = _parse_tune(name, spec.get("tune"), axes, presets, seeds)
    combos = list(itertools.product(*axes.values())) if axes else [()]
    for preset in presets:
        if preset not in _cache:
            _cache[preset] = preset_base(preset, presets_dir)
        base_values, base = _cache[preset]
        for combo in combos:
            labels = {axis: lab for axis, (lab, _) in zip(axes, combo)}
            overrides = _position_overrides(combo, rules, labels, preset)
            where = ", ".join(f"{a}={lab}" for a, lab in labels.items())
            study = None
            if tune is not None:
                study = _study_for(name, tune, axes, combo, rules, preset, base_values, base, studies, where)
            for seed in seeds:
                try:
                    config, settings = _resolve(base_values, base, overrides, seed, preset)
                    if study and seed == seeds[0]:  # best params must fit every budget (seeds do not matter)
                        _check_corners(config, study.space)
                except ConfigError as exc:
                    raise _err(name, f"preset {preset} [{where}]: {exc}") from None
                cid = cell_id(preset, config, base, tuned=study is not None)
                cell = Cell(cid, preset, int(seed), config, study.id if study else None, settings)
                known = cells.get(cid)
                if known is not None and known != cell:
                    what = "tuning studies" if known.config == config else "configs"
                    raise _err(name, f"duplicate cell id {cid} for two different {what}")
                cells[cid] = cell
                surface.entries.append(Entry(cid, preset, labels, int(seed)))
    _check_axes_distinct(surface)
    return surface


def _position_overrides(combo, rules, labels: dict, preset: str) -> dict:
    """The settings of one position: its axis variants in axis order, then every rule that matches."""
    overrides: dict = {}
    for _lab, settings in combo:
        overrides.update(settings)
    for rule in rules:
        if _rule_applies(rule.get("when") or {}, labels, preset):
            overrides.update(rule.get("set") or {})
    return overrides


def _resolve(base_values: dict, base: dict, overrides: dict, seed: int, preset: str) -> tuple[dict, dict]:
    """(a position's normalised run config for one seed, its bookkeeping settings); ConfigError if
    it is invalid."""
    merged = apply_overrides(base_values, {**overrides, "init_key": seed, "preset": preset})
    full = build_config(merged).to_dict()
    config = normalise(full, base)
    build_config(config)
    check_job(config)  # what the job gets: refuse now what it would refuse there
    return config, {key: full[key] for key in BOOKKEEPING_KEYS}


_CORNERS_OK: set = set()  # (config, space) pairs already checked: a study's positions repeat them


def _check_corners(config: dict, space: dict) -> None:
    """Every trial a study can draw must be a valid, runnable config: both ends of every range and
    every choice of every categorical entry (on top of the low corner)."""
    key = canonical_json([config, space])
    if key in _CORNERS_OK:
        return
    low, *rest = corners(space)
    assignments = [low, *rest] + [{**low, name: choice} for name, dist in space.items()
                                  for choice in dist.get("choices", [])[1:-1]]
    for assignment in assignments:
        check_job(build_config(apply_overrides(config, assignment)))
    if len(_CORNERS_OK) > 100_000:
        _CORNERS_OK.clear()
    _CORNERS_OK.add(key)


def _study_for(name, tune, axes, combo, rules, preset, base_values, base, studies, where):
    """The study that tunes this position: its config at the tuning budget (the budget axis's first
    variant) and seed (the surface's first); None when no space entry applies to the position."""
    axis_names = list(axes)
    labels = {a: lab for a, (lab, _) in zip(axis_names, combo)}
    space = dict(tune["space"])
    for rule in tune["rules"]:
        if _rule_applies(rule.get("when") or {}, labels, preset):
            space.update(check_space(rule.get("space") or {}, f"surface '{name}' tune.rules"))
    if not space:
        return None
    at_budget = list(combo)
    at_budget[axis_names.index(tune["budget_axis"])] = axes[tune["budget_axis"]][0]
    tuning_labels = {a: lab for a, (lab, _) in zip(axis_names, at_budget)}
    try:
        config, _settings = _resolve(base_values, base, _position_overrides(at_budget, rules, tuning_labels, preset),
                                     tune["tuning_seed"], preset)
        _check_corners(config, space)
    except ConfigError as exc:
        raise _err(name, f"tuning study for preset {preset} [{where}]: {exc}") from None
    study = Study(study_id(preset, config, base), preset, config, space, tune["trials"], tune["seed"],
                  tune["metric"], METRICS[tune["metric"]])
    known = studies.get(study.id)
    if known is not None and known != study:
        raise _err(name, f"study {study.id} is defined twice with different spaces, trials or objectives")
    studies[study.id] = study
    return study


def _check_axes_distinct(surface: Surface):
    """Two variants of one axis that give the same cells everywhere are a duplicated sweep entry."""
    for axis, labels in surface.axes.items():
        by_label: dict = {lab: {} for lab in labels}
        for e in surface.entries:
            rest = canonical_json({**{a: v for a, v in e.labels.items() if a != axis}, "p": e.preset, "s": e.seed})
            by_label[e.labels[axis]][rest] = e.cell_id
        for a, b in itertools.combinations(labels, 2):
            if by_label[a] == by_label[b]:
                some = next(iter(by_label[a].values()))
                raise _err(
                    surface.name,
                    f"duplicate cell ids: variants '{a}' and '{b}' of axis '{axis}' give the same cells "
                    f"everywhere (e.g. {some})",
                )


def expand(workflow_config: dict, presets_dir=None) -> Matrix:
    """Every surface of the workflow config, and the union of their cells."""
    surfaces_spec = workflow_config.get("surfaces") or {}
    if not surfaces_spec:
        raise ConfigError("the workflow config defines no surfaces")
    cells: dict = {}
    studies: dict = {}
    surfaces = {}
    cache: dict = {}
    for name, spec in surfaces_spec.items():
        if spec is None:  # a surface switched off by a later config file
            continue
        if "/" in str(name) or not name:
            raise ConfigError(f"surface name {name!r} must be non-empty and contain no '/'")
        check_path_name(name, "surface name")
        check_name(name, "surface name")
        surfaces[name] = expand_surface(name, spec, cells, presets_dir, cache, studies)
    if not surfaces:
        raise ConfigError("the workflow config defines no surfaces (all are switched off)")
    check_resource_presets(workflow_config, list_presets(presets_dir))
    return Matrix(surfaces=surfaces, cells=cells, studies=studies)


SCHEMA = Path(__file__).resolve().parents[2] / "config" / "schema" / "config.schema.yaml"


def validate_schema(config: dict) -> None:
    """The workflow config's JSON-schema check, as one ConfigError naming the offending key (the
    first step of llqr.workflow.validator.check_workflow, which the Snakefile and llqr.plan run)."""
    from .validator import check_schema

    check_schema(config)


def load_workflow_config(*paths) -> dict:
    """Deep-merge YAML files the way Snakemake merges --configfile (for use outside Snakemake)."""
    import yaml

    out: dict = {}
    for path in paths:
        _deep_merge(out, yaml.safe_load(Path(path).read_text()) or {})
    return out


def _deep_merge(into: dict, other: dict):
    for k, v in other.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _deep_merge(into[k], v)
        else:
            into[k] = v
