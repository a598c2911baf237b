"""What a cell costs: optimizer steps from its config, seconds per step from a per-preset table.

Pure Python and no data: the paper matrix is priced from config values and dataset sizes alone.
The step-time table (``config/step_times.yaml``) holds one entry per preset, either *measured*
(``python -m llqr.plan calibrate`` reads ``ms_per_step`` from a finished cell) or *estimated* from
the model's FLOPs (``python -m llqr.plan estimate``); every number says which it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

# Training-split sizes (examples) of the classification datasets, as our loaders build them.
TRAIN_SIZES = {"digits": 1438, "mnist": 60000, "cifar10": 50000, "cifar100": 50000, "svhn": 73257,
               "imagenet": 1281167, "imagenet100": 126689, "imagewoof": 9025,
               "cora": 1, "synth_graph": 1,  # one graph, one example
               "integral": 8000}  # the integral-operator data: 80% of its 10,000 fields (llqr.data.integral)
# Translation: sentence pairs of the training split and the mean padded length of a pair in BPE
# tokens (IWSLT14 de-en after cleaning; the synthetic demo corpus), so that batches per epoch
# ~= pairs * length / max_tokens.
TRANSLATION_PAIRS = {"iwslt14_de_en": (160239, 28.0), "synth_de_en": (3000, 12.0)}
STEP_TIMES = Path(__file__).resolve().parents[2] / "config" / "step_times.yaml"


def batches_per_epoch(config: dict) -> float:
    """Micro-batches per epoch, from the dataset's size (a float, as the runner counts them)."""
    dataset = config["dataset"]
    if dataset in TRANSLATION_PAIRS:
        pairs, length = TRANSLATION_PAIRS[dataset]
        return max(1.0, pairs * length / (config.get("max_tokens") or 4096))
    if dataset == "mod_sum":  # its size follows the modulus: the training share of the p² pairs
        from ..data.modular import train_count

        size = train_count(config.get("modulus") or 97)
    elif dataset == "oscillation":  # windows of the generated trajectories (llqr.data.oscillation)
        from ..data import oscillation

        size = oscillation.train_count(config.get("osc_variant") or "simple", config.get("osc_history") or 50,
                                       config.get("osc_horizon") or 50)
    else:
        size = TRAIN_SIZES[dataset] * (config.get("train_fraction") or 1.0)
    return max(1.0, round(size) / config["batch_size"])


def train_steps(config: dict) -> int:
    """Parameter updates of a run, as the runner counts them (llqr.train.accounting)."""
    from ..train.accounting import updates_per_run

    svag_l = config.get("svag_l") or 1 if config.get("noise") == "svag" else 1
    return updates_per_run(batches_per_epoch(config), config["total_epochs"], config.get("grad_acc_steps") or 1,
                           config.get("max_steps"), svag_l)


def step_multiplier(config: dict) -> tuple[float, str]:
    """How much dearer a step of this cell is than a plain step of its preset, and why."""
    if config.get("sam_mode"):
        return 2.0, "SAM: two gradients per step"
    if config.get("noise") == "noisy_gd" and config.get("noisy_gd_examples"):
        return config["noisy_gd_examples"] / config["batch_size"], "noisy GD: a full-subset gradient per step"
    return 1.0, ""


@dataclass(frozen=True)
class StepTime:
    seconds: float
    source: str  # "measured: ..." or "estimate: ..."


def load_step_times(path=None) -> dict:
    """preset -> StepTime from the YAML table (missing file: empty)."""
    path = Path(path) if path else STEP_TIMES
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    out = {}
    for preset, entry in (data.get("presets") or {}).items():
        if not isinstance(entry, dict) or not isinstance(entry.get("seconds"), (int, float)):
            raise ValueError(f"{path}: presets.{preset} needs a number 'seconds' (and a 'source'), got {entry!r}")
        out[preset] = StepTime(float(entry["seconds"]), str(entry.get("source", "")))
    return out


def cell_cost(config: dict, gpus: int, step_time: StepTime | None) -> dict:
    """Steps, hours of wall clock and device-hours of one run (None where no step time is known)."""
    steps = train_steps(config)
    factor, why = step_multiplier(config)
    # data_parallel splits each step over the job's GPUs (ideal scaling assumed); without it the
    # other GPUs of a multi-GPU job idle, and are still billed
    split = gpus if config.get("data_parallel") and gpus > 1 else 1
    hours = None if step_time is None else steps * step_time.seconds * factor / split / 3600.0
    return {"steps": steps, "factor": factor, "factor_reason": why, "hours": hours,
            "gpu_hours": None if hours is None else hours * max(gpus, 0),
            "source": step_time.source if step_time else "no step time: add the preset to config/step_times.yaml"}
