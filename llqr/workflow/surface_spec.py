"""A surface's spec checked: its axes and variant labels, rule conditions, metric and kind, with
errors that name the surface."""

from __future__ import annotations

from ..config.errors import ConfigError
from ..config.hashing import canonical_json
from ..config.safety import check_name, check_safe_text

# opt_state_bytes, ms_per_step and peak_memory_bytes (llqr.train.memory): cost columns of the
# optimizer studies; step_accuracy: the mean training accuracy of the steps between two log points
# (log_step_accuracy; the SVAG study's smoothing)
# test_error = 100 - test_accuracy (llqr.report.collect.DERIVED); kfac_agreement_cos/_rel: IKFAC's direction
# against KFAC's on the evaluation step's factors (measure_kfac_agreement; llqr.train.agreement)
METRICS = {"test_accuracy": "max", "test_error": "min", "test_loss": "min", "train_loss": "min",
           "train_accuracy": "max", "step_accuracy": "max", "valid_bleu": "max", "test_bleu": "max",
           "opt_state_bytes": "min", "ms_per_step": "min", "peak_memory_bytes": "min", "noise_ratio": "max",
           "noise_G": "min", "noise_N": "min", "kfac_agreement_cos": "max", "kfac_agreement_rel": "min"}
# grid: the metric table and curves; budget: metric vs epoch budget + power law; slcd: curve differences;
# sweep: the final metric (and any of ``metrics``) against a numeric axis on log axes (e.g. the batch size)
# bars: the final metric as bars grouped by the study's scheduler families (bar_axis: the codes);
# schedules: the study's schedules drawn from their formulas, no training (llqr.workflow.schedule_spec)
KINDS = ("grid", "budget", "slcd", "sweep", "bars", "schedules")
# A surface's group is a Snakemake target (a rule of that name in the Snakefile). Each companion
# study has its own group; the target `studies` is all of them.
STUDY_GROUPS = ("svag_study", "singd_study", "hlr_study")
GROUPS = ("demo", "demo_extra", "paper", *STUDY_GROUPS)
TARGET_GROUPS = {**{g: (g,) for g in GROUPS}, "studies": STUDY_GROUPS}  # target -> the groups it builds


def surface_error(surface: str, msg: str) -> ConfigError:
    return ConfigError(f"surface '{surface}': {msg}")


def check_group(surface: str, group) -> str:
    if group not in GROUPS:
        raise surface_error(surface, f"unknown group {group!r} (allowed: {', '.join(GROUPS)})")
    return group


def check_unique(surface: str, what: str, values: list):
    seen = set()
    for v in values:
        key = canonical_json(v)
        if key in seen:
            raise surface_error(surface, f"duplicate {what} {v!r}")
        seen.add(key)


def _check_label(surface: str, axis: str, label: str) -> None:
    """A variant label is shown in tables and figures and named by rule conditions: no shell
    metacharacters, control characters, '/' or '..'."""
    try:
        check_safe_text(label, f"label of axis '{axis}'")
    except ConfigError as exc:
        raise surface_error(surface, str(exc)) from None
    if not label.strip() or "/" in label or label.strip() == "..":
        raise surface_error(surface, f"label of axis '{axis}' {label!r} must be non-empty, without '/' and not '..'")


def parse_axes(name: str, axes: dict) -> dict:
    if not isinstance(axes, dict):
        raise surface_error(name, "'axes' must map axis names to lists of {label, set}")
    parsed = {}
    for axis, variants in axes.items():
        try:
            check_name(axis, "axis name")
        except ConfigError as exc:
            raise surface_error(name, str(exc)) from None
        if axis in ("preset", "seed"):
            raise surface_error(name, f"axis name '{axis}' is reserved")
        if not isinstance(variants, list) or not variants:
            raise surface_error(name, f"axis '{axis}' is an empty sweep; give at least one variant")
        out = []
        for v in variants:
            if not isinstance(v, dict) or "label" not in v:
                raise surface_error(name, f"axis '{axis}': each variant needs a 'label' (got {v!r})")
            label = str(v["label"])
            _check_label(name, axis, label)
            out.append((label, dict(v.get("set") or {})))
        check_unique(name, f"label in axis '{axis}':", [lab for lab, _ in out])
        check_unique(name, f"variant settings in axis '{axis}':", [s for _, s in out])
        parsed[axis] = out
    return parsed


def check_conditions(name: str, rules: list, axes: dict, presets: list) -> None:
    for rule in rules:
        for axis, wanted in (rule.get("when") or {}).items():
            if axis != "preset" and axis not in axes:
                raise surface_error(name, f"rule condition on unknown axis '{axis}' "
                                          f"(axes: {', '.join(axes) or 'none'})")
            labels = presets if axis == "preset" else [lab for lab, _ in axes[axis]]
            for w in wanted if isinstance(wanted, list) else [wanted]:
                if str(w) not in labels:
                    raise surface_error(name, f"rule condition {axis}={w!r} matches no variant "
                                              f"(have: {', '.join(labels)})")
