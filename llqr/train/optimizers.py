"""The main optimizer chain of the reference runner, as optax transformations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib


def decay_mask(params, excluded: list[str] | None):
    """True where weight decay applies: a leaf is excluded when any substring of ``excluded``
    occurs in any part of its key path (e.g. ['Norm', 'bias'])."""
    if not excluded:
        return jax.tree_util.tree_map(lambda _: True, params)

    def keep(path, _leaf):
        parts = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        return not any(sub in part for sub in excluded for part in parts)

    return jax.tree_util.tree_map_with_path(keep, params)


def normalize_conv_kernels(params):
    """The reference's ``normalize_conv_params`` trick: every parameter of rank >= 4 (conv kernels)
    rescaled to L2 norm sqrt(size) before the step's update is added (the update itself is
    computed at the unnormalised parameters, as there)."""

    def leaf(p):
        if p.ndim < 4:
            return p
        norm = jnp.sqrt(jnp.sum(jnp.square(p.astype(jnp.float32))))
        return (p * (np.sqrt(p.size) / jnp.maximum(norm, 1e-8))).astype(p.dtype)

    return jax.tree_util.tree_map(leaf, params)


def apply_updates(cfg, params, updates):
    """params + updates, with the conv kernels renormalised first when ``normalize_conv_params``."""
    return optax.apply_updates(normalize_conv_kernels(params) if cfg.normalize_conv_params else params, updates)


def build_main_tx(cfg, lr_schedule) -> optax.GradientTransformation:
    """sgd (no momentum) | polyak (heavy-ball) | adam | adamw[_b2-98|_b2-95], with coupled L2
    weight decay chained first for the non-adamw optimizers (as the reference does); prodigy and
    dadapt_adamw (optax.contrib) decay inside, decoupled."""
    name = cfg.optimizer
    wd = cfg.weight_decay or 0.0
    b1, b2 = cfg.adam_betas
    mask = (lambda p: decay_mask(p, cfg.wd_mask)) if cfg.wd_mask else None
    if name == "sgd":
        opt = optax.sgd(lr_schedule)
    elif name == "polyak":
        opt = optax.sgd(lr_schedule, momentum=cfg.momentum, nesterov=False)
    elif name == "adam":
        opt = optax.adam(lr_schedule, b1=b1, b2=b2)
    elif name == "adamw":
        opt = optax.adamw(lr_schedule, b1=b1, b2=b2, weight_decay=wd, mask=mask)
    elif name in ("singd", "ingd", "ikfac", "kfac"):
        return kronecker_tx(cfg, lr_schedule)
    elif name == "prodigy":  # learning-rate free: lr is a multiplier on the estimated step size (1 in the study)
        return optax.contrib.prodigy(lr_schedule, betas=(b1, b2), estim_lr_coef=cfg.prodigy_d_coef, weight_decay=wd)
    elif name == "dadapt_adamw":
        return optax.contrib.dadapt_adamw(lr_schedule, betas=(b1, b2), weight_decay=wd)
    elif name in ("adamw_b2-98", "adamw_b2-95"):
        opt = optax.adamw(lr_schedule, b1=b1, b2=0.98 if name.endswith("98") else 0.95, weight_decay=wd)
    else:
        raise ValueError(f"unknown optimizer {name!r}")
    if wd and "adamw" not in name:
        return optax.chain(optax.add_decayed_weights(wd, mask), opt)
    return opt


def kronecker_tx(cfg, lr_schedule) -> optax.GradientTransformation:
    """SINGD / INGD / IKFAC / KFAC (llqr.optim.singd): the preconditioning transformation chained
    with optax's coupled weight decay, momentum and learning rate. The runner refreshes its factors
    every ``factor_update_every`` steps (llqr.train.actions.RefreshFactors). INGD is SINGD with
    dense factors (the paper's Fig. 4: SINGD replaces INGD's dense K, C by structured ones)."""
    from ..optim import singd

    common = {"momentum": cfg.momentum, "damping": cfg.factor_damping, "weight_decay": cfg.weight_decay or 0.0}
    if cfg.optimizer == "kfac":
        return singd.kfac(lr_schedule, ema_decay=cfg.kfac_ema, dtype=kfac_dtype(cfg), **common)
    if cfg.optimizer == "ikfac":
        return singd.ikfac(lr_schedule, lr_cov=cfg.lr_cov, **common)
    structure = "dense" if cfg.optimizer == "ingd" else cfg.singd_structure
    return singd.singd(lr_schedule, lr_cov=cfg.lr_cov, alpha1=cfg.singd_alpha1, structure=structure, **common)


def kfac_dtype(cfg):
    """KFAC's factor dtype: bfloat16 under precision=bf16 unless kfac_precision=fp32, else float32."""
    return jnp.bfloat16 if cfg.precision == "bf16" and cfg.kfac_precision == "run" else jnp.float32
