"""``measure_kfac_agreement`` (IKFAC runs): at every evaluation, how close the direction IKFAC
applies is to the KFAC direction it approximates (``llqr.optim.kfac_agreement``).

Cadence: each evaluation (``test_eval_freq``, and the explicit final one), before that step's
factor refresh and update. On the step's own first micro-batch, with the dropout key of that
step's refresh (what the refresh would capture), the factors A, G are captured and the gradient X taken;
IKFAC's direction is K Kᵀ X C Cᵀ with the state as it stands, KFAC's is (A + λI)⁻¹ X (G + λI)⁻¹
with IKFAC's λ (``factor_damping``) and no moving average (IKFAC's fixed point on this batch).
The eval event gains ``kfac_agreement_cos`` (cosine over all layers), ``kfac_agreement_rel``
(‖d_ikfac − d_kfac‖ / ‖d_kfac‖) and ``kfac_agreement_cos_min`` (the worst layer's cosine); the
summary's final metrics carry the final evaluation's values. The measurement only reads: the
state, the data stream and the random keys are left as they were.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ..optim.capture import capture, factors_from_capture
from ..optim.kfac_agreement import agreement, find_singd_state, layer_directions
from ..optim.losses import smoothed_cross_entropy
from .steps import Forward

FIELDS = ("kfac_agreement_cos", "kfac_agreement_rel", "kfac_agreement_cos_min")


def measure(fwd: Forward, state, x, y) -> dict:
    """The agreement fields (device scalars) on the batch (x, y) at ``state``."""
    _, key = jax.random.split(state.dropout_key)  # the key the step's refresh and update use

    def apply_fn(v, inputs):
        return fwd.apply(v["params"], v.get("batch_stats"), inputs, train=True, rngs={"dropout": key},
                         mutable=["batch_stats"])[0]

    def loss_fn(out, labels):
        return smoothed_cross_entropy(out, labels, fwd.label_smoothing, fwd.pad)

    stats = {"batch_stats": state.batch_stats} if state.batch_stats else {}
    _, captured = capture(apply_fn, {"params": state.params, **stats}, x, y, loss_fn)
    batch = jax.tree_util.tree_leaves(x)[0].shape[0]
    factors = {k: factors_from_capture(a.astype(jnp.float32), g.astype(jnp.float32), batch)
               for k, (a, g) in captured.items()}
    grads = jax.grad(lambda p: loss_fn(apply_fn({"params": p, **stats}, x), y))(state.params)
    scores = agreement(layer_directions(find_singd_state(state.opt_state), grads, factors))
    return dict(zip(FIELDS, (scores["cos"], scores["rel"], scores["cos_min"])))


class KfacAgreement:
    """The measurement bound to a run: ``measure`` at an evaluation, ``final`` for the summary."""

    def __init__(self, model, cfg, pad: int | None):
        fwd = Forward(model, cfg.label_smoothing, pad, jnp.bfloat16 if cfg.precision == "bf16" else None)
        self.fn = jax.jit(functools.partial(measure, fwd))

    @classmethod
    def for_run(cls, cfg, model, pad: int | None) -> KfacAgreement | None:
        """The measurement when the config asks for it (read for optimizer=ikfac only), else None."""
        return cls(model, cfg, pad) if cfg.optimizer == "ikfac" and cfg.measure_kfac_agreement else None

    def measure(self, run, step: int) -> dict:
        source, cursor = run.source, run.source.cursor
        batch = source.peek(step)  # the step's batch: its refresh and update take the same one
        if step == run.total_steps - 1:
            source.cursor = cursor  # the sentinel takes no step: the checkpointed stream stays put
        out = self.fn(run.state, batch.xs[0], batch.ys[0])
        return {k: float(v) for k, v in out.items()}

    def final(self, run, final_step: int) -> dict:
        """The final evaluation's fields: the periodic one's when it was at the end, else measured."""
        last = [e for e in run.history if e["step"] == final_step and FIELDS[0] in e][-1:]
        return {k: last[0][k] for k in FIELDS} if last else self.measure(run, final_step)
