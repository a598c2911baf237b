"""Cell identity: a surface position's run config resolved, normalised and named.

A cell id is ``<preset>/<diff>/seed<init_key>`` where ``<diff>`` lists, sorted, the resolved
values that differ from the preset, after resetting keys that cannot affect the run (the
preconditioner keys when ``use_preconditioner=false``; the SAM keys when ``sam_mode`` is null).
Two sweep entries that train the same thing therefore share one id, inside a surface or across
surfaces, and are trained once. A cell's rule params (``rule_params``) are its config without the
keys its model, dataset, optimizer or noise mode never reads. Pure Python: no JAX.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote

from ..config import FIELDS, SCHEDULE_FAMILIES
from ..config.errors import ConfigError
from ..config.fields import BOOKKEEPING_KEYS, INERT_KEYS, TABLES, omitted_at_default
from ..config.hashing import canonical_json, config_hash
from ..config.keyspec import PARAMS_OWNERS
from ..config.presets import apply_overrides, load_preset, resolve_values
from ..config.validate import check_combinations
from .job_checks import check_job

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


# The keys read only for some models, datasets, optimizers or noise modes (their field's read_when).
_OWNED_KEYS = tuple(k for owner in PARAMS_OWNERS for k in TABLES.owned[owner])


# The keys that read_when conditions name (model, dataset, optimizer, noise, ...).
_CONDITION_KEYS = tuple(sorted({k for alts in TABLES.read_when.values() for alt in alts for k in alt}))
_UNREAD: dict = {}  # the condition keys' values -> the keys with a read_when that such a config does not meet


def _met(alternatives: tuple, config: dict) -> bool:
    """Whether ``config`` meets a field's read_when (fields.is_read, for the keys with one)."""
    return any(all(config.get(k) in cond for k, cond in alt.items()) for alt in alternatives)


def _unmet(config: dict) -> frozenset:
    """The keys whose read_when ``config`` does not meet; decided by the condition keys alone, so
    remembered per their values (the matrix asks once per position)."""
    signature = tuple(_hashable(config.get(k)) for k in _CONDITION_KEYS)
    if signature not in _UNREAD:
        _UNREAD[signature] = frozenset(key for key, alts in TABLES.read_when.items() if not _met(alts, config))
    return _UNREAD[signature]


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


def _unread(config: dict) -> dict:
    """The keys of ``config`` that its model, dataset, optimizer or noise mode never reads."""
    unmet = _unmet(config)
    return {key: config[key] for key in _OWNED_KEYS if key in config and key in unmet}


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
            if isinstance(value, dict):
                text = "_".join(f"{_fmt(k)}>{_fmt(v)}" for k, v in value.items())
            else:
                text = _fmt(value)
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
    if out.get("augment") is False:  # no crop, flip or Cutout: their settings cannot change the run
        for key in ("crop_mode", "crop_padding", "cutout"):
            out[key] = base[key]
    # the conditions name only keys never reset here (model, dataset, optimizer, noise,
    # use_preconditioner, sam_mode, precond_identity_scaling), so one pass over the config suffices
    unread = [key for key in _unmet(out) if key in out]
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


def preset_base(preset: str | None, presets_dir=None) -> tuple[dict, dict]:
    """(the preset's raw values, its fully resolved config): what cell ids are diffs against."""
    values = load_preset(preset, presets_dir) if preset else {}
    return values, resolve_values({**values, "preset": preset or ""})


# --- a surface position as a cell's config --------------------------------------------------


def rule_applies(when: dict, labels: dict, preset: str) -> bool:
    for axis, wanted in when.items():
        have = preset if axis == "preset" else labels.get(axis)
        options = wanted if isinstance(wanted, list) else [wanted]
        if have not in [str(o) for o in options]:
            return False
    return True


def position_overrides(combo, rules, labels: dict, preset: str) -> dict:
    """The settings of one position: its axis variants in axis order, then every rule that matches."""
    overrides: dict = {}
    for _lab, settings in combo:
        overrides.update(settings)
    for rule in rules:
        if rule_applies(rule.get("when") or {}, labels, preset):
            overrides.update(rule.get("set") or {})
    return overrides


def resolve_position(base_values: dict, base: dict, overrides: dict, seed: int, preset: str) -> tuple[dict, dict]:
    """(a position's normalised run config for one seed, its bookkeeping settings); ConfigError if
    it is invalid."""
    merged = apply_overrides(base_values, {**overrides, "init_key": seed, "preset": preset})
    full = resolve_values(merged)
    config = normalise(full, base)
    check_combinations(config)  # normalise only puts back the preset's (already coerced) values
    check_job(config)  # what the job gets: refuse now what it would refuse there
    return config, {key: full[key] for key in BOOKKEEPING_KEYS}


def resolve_cached(cache: dict, base_values: dict, base: dict, overrides: dict, seed: int, preset: str) -> tuple:
    """``resolve_position``, once per (preset, overrides, seed) across surfaces: the study surfaces that
    read the same runs (budget, curves, slcd) would otherwise build and check each config three times."""
    key = ("position", preset, canonical_json(overrides), int(seed))
    if key not in cache:
        try:
            cache[key] = resolve_position(base_values, base, overrides, seed, preset)
        except ConfigError as exc:
            cache[key] = exc
    if isinstance(cache[key], ConfigError):
        raise cache[key]
    return cache[key]
