"""What a cell's job would refuse, checked when the workflow is planned: the runner's own checks
(llqr.config.validate.check_runnable) plus those that need the datasets' sizes."""

from __future__ import annotations

from ..config.validate import ConfigError, check_runnable
from .cost import TRAIN_SIZES


def check_job(cfg, devices: int | None = None) -> None:
    """``check_runnable`` and the dataset-size limits (a noisy-GD subset within the train split)."""
    check_runnable(cfg, devices)
    get = cfg.get if isinstance(cfg, dict) else lambda key: getattr(cfg, key)
    if get("noise") == "noisy_gd" and get("noisy_gd_examples") is not None:
        size = _train_size(get)
        if size is not None and get("noisy_gd_examples") > size:
            raise ConfigError(f"noisy_gd_examples={get('noisy_gd_examples')} exceeds the {size} training examples "
                              f"of {get('dataset')}")
    if get("noise") == "noisy_gd" and get("noisy_gd_examples") is None and get("noisy_gd_chunk") is not None:
        size = _train_size(get)
        if size is not None and size % get("noisy_gd_chunk"):
            raise ConfigError(f"noisy_gd_chunk={get('noisy_gd_chunk')} must divide the noisy-GD subset, here the "
                              f"whole {size}-example train split of {get('dataset')} (noisy_gd_examples=null)")


def _train_size(get) -> int | None:
    """Training examples the run sees (after train_fraction), where known without the data."""
    from ..config.families import MODULAR_DATASETS

    if get("dataset") in MODULAR_DATASETS:
        from ..data.modular import train_count

        return train_count(get("modulus"))
    if get("dataset") not in TRAIN_SIZES:
        return None
    size = TRAIN_SIZES[get("dataset")]
    return max(1, round(get("train_fraction") * size)) if get("train_fraction") < 1.0 else size
