"""Schedule families as step -> value functions (optax schedules where optax has the shape).

Every builder takes the family's parameters (``llqr.config.schedule_families``), the base
value it modulates (lr, precond-lr multiplier, ema decay, precond period or rho), the run's
epoch budget and steps-per-epoch (a float, as in the reference: CIFAR-10 at batch 128 has
390.625). Functions accept Python ints or traced counts.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import optax

from .budget_schedules import build_budget_schedule
from .svag_schedules import build_svag_schedule


def _cosine(base, eta_min, length, clamp):
    def fn(step):
        t = jnp.asarray(step, jnp.float32)
        if clamp:
            t = jnp.minimum(t, length)
        return eta_min + (base - eta_min) * 0.5 * (1.0 + jnp.cos(math.pi * t / length))

    return fn


def _scaled_after(base, boundaries_and_scales: dict):
    """base times every scale whose (float) boundary the step has reached (optax's rule)."""
    items = sorted(boundaries_and_scales.items())

    def fn(step):
        t = jnp.asarray(step, jnp.float32)
        value = jnp.asarray(base, jnp.float32)
        for bound, scale in items:
            value = value * jnp.where(t >= bound, scale, 1.0)
        return value

    return fn


def build_schedule(sched: dict, base: float, total_epochs: float, spe: float):
    """The schedule ``sched`` (a validated mapping with ``name``) applied to ``base``."""
    name = sched["name"]
    p = {k: v for k, v in sched.items() if k != "name"}
    if name == "constant":
        return lambda step: jnp.asarray(base, jnp.float32)
    if name == "cosine_annealing":
        return _cosine(base, p["eta_min"], spe * p["t_max"], clamp=not p["cycle"])
    if name == "cosine_decay_with_floor":
        return _cosine(base, p["eta_min"], spe * p["t_max"], clamp=True)
    if name == "warmup_cosine_decay":
        warmup = int(p["warmup_epochs"] * spe)
        decay = max(int(spe * p["t_max"]), warmup + 1)
        return optax.warmup_cosine_decay_schedule(p["init_value"], base, warmup, decay, p["eta_min"])
    if name == "step_warmup":
        width = max(total_epochs * spe * p["ratio"], 1e-12)
        init = p["init_value"]
        return lambda step: init + (base - init) * jnp.minimum(jnp.asarray(step, jnp.float32) / width, 1.0)
    if name == "linear":
        return optax.linear_schedule(
            base, p["factor"] * base, int(spe * p["transition_epochs"]), int(spe * p["transition_begin"])
        )
    if name == "piecewise_constant":
        return _scaled_after(base, {spe * float(e): s for e, s in p["boundaries_and_scales"].items()})
    if name == "warmup_piecewise_decay":
        warm = int(p["warmup_ratio"] * int(total_epochs * spe))
        decay = _scaled_after(base, {int(spe * e) - warm: p["factor"] for e in p["boundaries"]})
        if warm == 0:
            return decay
        return optax.join_schedules([optax.linear_schedule(p["init_value"], base, warm), decay], [warm])
    if name == "inverse_sqrt":
        width, init = p["warmup_steps"], p["init_value"]

        def inv_sqrt(step):
            t = jnp.asarray(step, jnp.float32)
            warm = init + (base - init) * t / width
            return jnp.where(t < width, warm, base * jnp.sqrt(width) / jnp.sqrt(jnp.maximum(t, 1.0)))

        return inv_sqrt
    if name == "cosine_ramp_step_increase":
        init = p["init_value"]
        target = base if p["target"] is None else p["target"]
        a, e, c, every, delta = p["ramp_start"], p["ramp_end"], p["step_start"], p["step_every"], p["step_delta"]

        def ramp(step):
            t = jnp.asarray(step, jnp.float32)
            prog = jnp.clip((t - a) / (e - a), 0.0, 1.0)
            steps_up = jnp.where(t >= c, jnp.floor((t - c) / every) + 1.0, 0.0)
            return init + (target - init) * 0.5 * (1.0 - jnp.cos(math.pi * prog)) + delta * steps_up

        return ramp
    if name in ("svag_triangle", "svag_cosine"):
        return build_svag_schedule(name, p, base, total_epochs, spe)
    study = build_budget_schedule(name, p, base, total_epochs, spe)
    if study is not None:
        return study
    raise ValueError(f"unknown schedule family {name!r}")
