"""Schedule families and their parameters (pure data; no JAX).

A schedule setting is a mapping ``{"name": <family>, <param>: <value>, ...}``. Switching the
family (``lr_scheduler=inverse_sqrt``) resets the parameters to that family's defaults, as
a Hydra group switch does in the original runner. Epoch-valued parameters are multiplied by
steps-per-epoch when the schedule is built (``llqr.train.schedules``).

config owns the name lists because it is the bottom layer; the implementing modules import them.
``SCHEDULE_FAMILIES`` is the one list of families: ``llqr.train.schedules.build_schedule`` (and
``budget_schedules``) dispatch on its names, and tests/test_families.py and test_schedules.py check
that every family builds and that they build no other.
"""

from __future__ import annotations

# family -> {param: (default, kind)}; kind in {"float", "int", "bool", "float?", "list", "dict"}
SCHEDULE_FAMILIES: dict[str, dict[str, tuple[object, str]]] = {
    "constant": {},
    "cosine_annealing": {"t_max": (200.0, "float"), "eta_min": (0.0, "float"), "cycle": (True, "bool")},
    "cosine_decay_with_floor": {"t_max": (200.0, "float"), "eta_min": (0.0, "float")},
    "warmup_cosine_decay": {
        "init_value": (1e-5, "float"),
        "warmup_epochs": (5.0, "float"),
        "t_max": (200.0, "float"),
        "eta_min": (0.0, "float"),
    },
    "step_warmup": {"ratio": (1e-4, "float"), "init_value": (0.0, "float")},
    "linear": {"factor": (0.01, "float"), "transition_epochs": (2.0, "float"), "transition_begin": (0.0, "float")},
    "piecewise_constant": {"boundaries_and_scales": ({}, "dict")},
    "warmup_piecewise_decay": {
        "boundaries": ([30, 70, 90], "list"),
        "factor": (0.1, "float"),
        "warmup_ratio": (0.05, "float"),
        "init_value": (1e-6, "float"),
    },
    "inverse_sqrt": {"warmup_steps": (4000, "int"), "init_value": (0.0, "float")},
    "cosine_ramp_step_increase": {
        "init_value": (0.005, "float"),
        "target": (None, "float?"),
        "ramp_start": (4000, "int"),
        "ramp_end": (150000, "int"),
        "step_start": (200000, "int"),
        "step_every": (50000, "int"),
        "step_delta": (0.05, "float"),
    },
    # The HyperbolicLR study's schedulers (ours, after Kim 2024; llqr.train.budget_schedules). They
    # follow the run's epoch budget N = total_epochs and step once per epoch, except one_cycle and
    # cyclic (per batch). eta_min is the study's eta_inf.
    "polynomial": {"power": (0.5, "float")},
    "cosine": {"eta_min": (1e-6, "float")},
    "exponential": {"gamma": (0.96, "float")},
    "linear_decay": {"end_factor": (1e-3, "float")},
    "step": {"step_size": (None, "float?"), "gamma": (0.1, "float")},  # step_size null: N // 3 epochs
    "one_cycle": {"pct_start": (0.3, "float"), "div_factor": (25.0, "float"), "final_div_factor": (1e4, "float")},
    "cyclic": {"eta_min": (1e-6, "float"), "step_up": (0.25, "float")},  # step_up: fraction of all steps
    **{name: {"eta_min": (1e-6, "float"), "upper_bound": (250.0, "float")}
       for name in ("hyperbolic", "exp_hyperbolic", "warmup_hyperbolic", "warmup_exp_hyperbolic")},
    "warmup_cosine": {"eta_min": (1e-6, "float"), "start_factor": (0.01, "float")},
    # The SVAG study's triangle and cosine schedules (ours, after Li, Malladi & Arora 2021;
    # llqr.train.svag_schedules): per epoch over the budget total_epochs, peaking at the base value.
    "svag_triangle": {"eta_min": (1e-4, "float"), "heights": ([1.0, 0.5], "list")},
    "svag_cosine": {"eta_min": (1e-4, "float"), "offset": (1e-3, "float")},
}
HYPERBOLIC_FAMILIES = ("hyperbolic", "exp_hyperbolic", "warmup_hyperbolic", "warmup_exp_hyperbolic")
# The study's scheduler codes (README of the HyperbolicLR code) -> our family names.
STUDY_CODES = {"N": "constant", "P": "polynomial", "C": "cosine", "E": "exponential", "L": "linear_decay",
               "S": "step", "OC": "one_cycle", "CY": "cyclic", "H": "hyperbolic", "EH": "exp_hyperbolic",
               "WH": "warmup_hyperbolic", "WEH": "warmup_exp_hyperbolic", "WC": "warmup_cosine"}
# The study's scheduler families as its result figures group them (paper/result_plot.py), in order.
# LR-free entries are optimizers (Prodigy, D-Adapt Adam at lr 1, no schedule), not schedules.
STUDY_FAMILY_GROUPS = (("Traditional", ("N", "P", "C", "E", "L", "S")), ("Cyclic/Warmup", ("OC", "CY", "WC")),
                       ("Hyperbolic", ("H", "EH", "WH", "WEH")), ("LR-free", ("Prodigy", "DAdapt")))
OTHER_GROUP = "Other"


def study_family_group(label) -> str:
    """The family group of a scheduler code or LR-free optimizer label (case-insensitive: a
    surface may spell them ``prodigy``, ``dadapt``); ``OTHER_GROUP`` for anything else."""
    wanted = str(label).strip().lower()
    for group, codes in STUDY_FAMILY_GROUPS:
        if wanted in (c.lower() for c in codes):
            return group
    return OTHER_GROUP

SCHEDULE_KEYS = (
    "lr_scheduler",
    "precond_lr_scheduler",
    "ema_scheduler",
    "precond_update_scheduler",
    "perturbation_rho_scheduler",
)


def default_schedule(name: str) -> dict:
    """The family's parameter defaults, with ``name`` first (deep-copied)."""
    out: dict = {"name": name}
    for param, (default, _kind) in SCHEDULE_FAMILIES[name].items():
        out[param] = _copy(default)
    return out


def _copy(value):
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    return value
