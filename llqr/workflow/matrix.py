"""Surfaces (presets x sweep axes x seeds) expanded into cells with stable, readable ids.

Each surface position becomes one cell per seed (``llqr.workflow.cells``: resolution, normalisation,
ids and rule params), and, with a ``tune`` block, the study that tunes it
(``llqr.workflow.studies``); the surface spec is checked by ``llqr.workflow.surface_spec``. Pure
Python: no JAX, so the Snakefile parses fast.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

from ..config.errors import ConfigError
from ..config.hashing import canonical_json
from ..config.presets import list_presets
from ..config.safety import check_name, check_path_name
from .cells import (  # noqa: F401 (BOOKKEEPING_KEYS and normalise: importable from here, as before)
    BOOKKEEPING_KEYS,
    Cell,
    cell_id,
    normalise,
    position_overrides,
    preset_base,
    resolve_cached,
)
from .resources import check_resource_presets
from .schedule_spec import parse_schedules
from .studies import Study, check_corners, parse_tune, study_for  # noqa: F401 (Study: importable from here)
from .surface_spec import (
    KINDS,
    METRICS,
    TARGET_GROUPS,
    check_conditions,
    check_group,
    check_unique,
    parse_axes,
    surface_error,
)


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
    sweep_axis: str | None = None  # kind sweep: the axis whose numeric labels are the figure's x (log scale)
    metrics: list | None = None  # kind sweep: one figure panel per metric (default: the surface metric)
    bar_axis: str | None = None  # kind bars: the axis whose labels are scheduler codes (bars, by family)
    schedules: dict | None = None  # kind schedules: the checked spec (llqr.workflow.schedule_spec); no cells
    entries: list = field(default_factory=list)

    @property
    def cell_ids(self) -> list[str]:
        return sorted({e.cell_id for e in self.entries})

    def to_dict(self) -> dict:
        """What the aggregation step needs, as plain JSON (a kind's own keys only where set, so the
        other surfaces' aggregate params stay as they were)."""
        extra = {key: getattr(self, key) for key in ("bar_axis", "schedules") if getattr(self, key) is not None}
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
            "sweep_axis": self.sweep_axis,
            "metrics": self.metrics or [self.metric],
            "modes": {m: METRICS[m] for m in self.metrics or [self.metric]},
            "entries": [
                {"cell": e.cell_id, "preset": e.preset, "labels": e.labels, "seed": e.seed} for e in self.entries
            ],
            **extra,
        }


@dataclass
class Matrix:
    surfaces: dict
    cells: dict
    studies: dict = field(default_factory=dict)

    def group(self, name: str) -> list[str]:
        """The surfaces a group target builds (``studies``: every study's group)."""
        groups = TARGET_GROUPS.get(name, (name,))
        return [s for s, surf in self.surfaces.items() if surf.group in groups]


def _check_sweep(surface: Surface, axes: dict) -> None:
    """kind sweep: sweep_axis names an axis whose labels are positive numbers; metrics are known."""
    name = surface.name
    if (surface.kind == "sweep") != (surface.sweep_axis is not None):
        raise surface_error(name, "sweep_axis goes with kind sweep (and kind sweep needs it)")
    if surface.metrics is not None and surface.kind != "sweep":
        raise surface_error(name, "metrics (one figure panel each) goes with kind sweep")
    for metric in surface.metrics or []:
        if metric not in METRICS:
            raise surface_error(name, f"unknown metric '{metric}' in metrics (allowed: {', '.join(METRICS)})")
    if (surface.kind == "bars") != (surface.bar_axis is not None):
        raise surface_error(name, "bar_axis goes with kind bars (and kind bars needs it)")
    if surface.bar_axis is not None and surface.bar_axis not in axes:
        raise surface_error(name, f"bar_axis '{surface.bar_axis}' is not an axis (axes: {', '.join(axes) or 'none'})")
    if surface.sweep_axis is None:
        return
    if surface.sweep_axis not in axes:
        raise surface_error(name, f"sweep_axis '{surface.sweep_axis}' is not an axis "
                                  f"(axes: {', '.join(axes) or 'none'})")
    for label, _ in axes[surface.sweep_axis]:
        try:
            ok = float(label) > 0
        except ValueError:
            ok = False
        if not ok:
            raise surface_error(name, f"sweep axis '{surface.sweep_axis}': label {label!r} is not a positive number "
                                      "(the figure's x axis is logarithmic)")


def expand_surface(name: str, spec: dict, cells: dict, presets_dir=None, _cache=None, studies=None) -> Surface:
    """Expand one surface spec; add its cells to ``cells`` and its tuning studies to ``studies``
    (both shared across surfaces)."""
    _cache = {} if _cache is None else _cache
    studies = {} if studies is None else studies
    if spec.get("kind") == "schedules":
        return schedule_surface(name, spec)
    presets = spec.get("presets") or []
    if not presets:
        raise surface_error(name, "'presets' is empty")
    check_unique(name, "preset", presets)
    for preset in presets:
        try:
            check_name(preset, "preset")
        except ConfigError as exc:
            raise surface_error(name, str(exc)) from None
    seeds = spec.get("seeds") or []
    if not seeds:
        raise surface_error(name, "'seeds' is empty")
    check_unique(name, "seed", seeds)
    axes = parse_axes(name, spec.get("axes") or {})
    rules = spec.get("rules") or []
    check_conditions(name, rules, axes, presets)
    metric = spec.get("metric", "test_accuracy")
    if metric not in METRICS:
        raise surface_error(name, f"unknown metric '{metric}' (allowed: {', '.join(METRICS)})")
    table = spec.get("table") or {}
    rows = list(table.get("rows") or ["preset"])
    columns = list(table.get("columns") or [a for a in axes if a not in rows])
    layout = rows + columns
    if sorted(layout) != sorted(["preset", *axes]):
        raise surface_error(name, f"table rows + columns {layout} must name 'preset' and every axis "
                                  f"({', '.join(axes)}) once")

    surface = Surface(
        name=name,
        title=spec.get("title", name),
        caption=spec.get("caption", ""),
        group=check_group(name, spec.get("group", "demo")),
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
        sweep_axis=spec.get("sweep_axis"),
        metrics=spec.get("metrics"),
        bar_axis=spec.get("bar_axis"),
    )
    if surface.kind not in KINDS:
        raise surface_error(name, f"unknown kind '{surface.kind}' (allowed: {', '.join(KINDS)})")
    _check_sweep(surface, axes)
    for key in ("budget_axis", "panels"):
        if getattr(surface, key) is not None and getattr(surface, key) not in axes:
            raise surface_error(name, f"{key} '{getattr(surface, key)}' is not an axis "
                                      f"(axes: {', '.join(axes) or 'none'})")
    if surface.kind in ("budget", "slcd") and surface.budget_axis is None:
        raise surface_error(name, f"kind {surface.kind} needs budget_axis: the axis whose labels are epoch budgets")
    if surface.budget_axis is not None:
        for label, _ in axes[surface.budget_axis]:
            try:
                float(label)
            except ValueError:
                raise surface_error(name, f"budget axis '{surface.budget_axis}': label {label!r} is not a "
                                          f"number") from None
    tune = parse_tune(name, spec.get("tune"), axes, presets, seeds)
    combos = list(itertools.product(*axes.values())) if axes else [()]
    for preset in presets:
        if preset not in _cache:
            _cache[preset] = preset_base(preset, presets_dir)
        base_values, base = _cache[preset]
        for combo in combos:
            labels = {axis: lab for axis, (lab, _) in zip(axes, combo)}
            overrides = position_overrides(combo, rules, labels, preset)
            where = ", ".join(f"{a}={lab}" for a, lab in labels.items())
            study = None
            if tune is not None:
                study = study_for(name, tune, axes, combo, rules, preset, base_values, base, studies, where, _cache)
            for seed in seeds:
                try:
                    config, settings = resolve_cached(_cache, base_values, base, overrides, seed, preset)
                    if study and seed == seeds[0]:  # best params must fit every budget (seeds do not matter)
                        check_corners(config, study.space)
                except ConfigError as exc:
                    raise surface_error(name, f"preset {preset} [{where}]: {exc}") from None
                cid = cell_id(preset, config, base, tuned=study is not None)
                cell = Cell(cid, preset, int(seed), config, study.id if study else None, settings)
                known = cells.get(cid)
                if known is not None and known != cell:
                    what = "tuning studies" if known.config == config else "configs"
                    raise surface_error(name, f"duplicate cell id {cid} for two different {what}")
                cells[cid] = cell
                surface.entries.append(Entry(cid, preset, labels, int(seed)))
    _check_axes_distinct(surface)
    return surface


def schedule_surface(name: str, spec: dict) -> Surface:
    """A ``kind: schedules`` surface: drawn from the schedule formulas, so no presets, seeds or cells
    (its aggregate job has no inputs)."""
    schedules = parse_schedules(name, spec)
    return Surface(name=name, title=spec.get("title", name), caption=spec.get("caption", ""),
                   group=check_group(name, spec.get("group", "demo")), metric="test_accuracy", mode="max", axes={},
                   rows=["schedule"], columns=["budget"], seeds=[], x=spec.get("x", "step"), kind="schedules",
                   schedules=schedules)


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
                raise surface_error(
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
