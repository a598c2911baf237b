"""Model registry: config model name -> Flax module."""

from __future__ import annotations


class ModelNotAvailable(RuntimeError):
    """The config names a model this version of llqr cannot build yet."""


AVAILABLE = ("mlp",)


def build_model(cfg, num_classes: int):
    if cfg.model == "mlp":
        from .mlp import MLP

        return MLP(hidden=tuple(cfg.mlp_hidden), num_classes=num_classes, dropout_rate=cfg.dropout_rate)
    raise ModelNotAvailable(
        f"model '{cfg.model}' (preset '{cfg.preset}') is not implemented in this version of llqr; "
        f"available models: {', '.join(AVAILABLE)}. The workflow still lists its cells (snakemake -n)."
    )
