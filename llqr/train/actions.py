"""Periodic actions of the training loop, behind one small interface.

An action has ``due(step) -> bool`` and ``__call__(run, step)``; it reads and writes the loop's
``Run`` context (state, batch source, metrics log, timer). The loop runs, at each step, the
``before`` actions (checkpoint, evaluate: also at the final sentinel step), then the ``refresh``
actions (every preconditioner's refresh: the LLQR fit, the Kronecker factors), then the update,
then the ``after`` actions (train log and console report). Adding a periodic behaviour means adding
an action, not a branch of the loop.
"""

from __future__ import annotations

import time
from typing import NamedTuple, Protocol

import jax

from ..optim import block_skews, block_stats, get_blocks, set_blocks
from .evaluators import periodic
from .progress import fmt_eta


class Action(Protocol):
    def due(self, step: int) -> bool: ...

    def __call__(self, run, step: int) -> None: ...


class Actions(NamedTuple):
    before: list  # at every step incl. the final sentinel, before the update
    refresh: list  # preconditioner refreshes, before the update (not at the sentinel)
    after: list  # after the update


class _Timed:
    """Time spent in the action is left out of ms_per_step."""

    def timed(self, run, fn):
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            run.timer.exclude(time.perf_counter() - t0)


class Checkpoint(_Timed):
    """Every ``checkpoint_freq`` steps (never at step 0), after checking the pending losses: a
    diverged run is never checkpointed past its divergence."""

    def __init__(self, cfg):
        self.every = cfg.checkpoint_freq

    def due(self, step: int) -> bool:
        return step > 0 and step % self.every == 0

    def __call__(self, run, step: int) -> None:
        run.pending.check()
        self.timed(run, lambda: run.save(step))


class Evaluate(_Timed):
    """The evaluator's metrics (and the noise probe's, when due), the best value so far, and the
    best checkpoint of runs that keep one."""

    def __init__(self, evaluator, probe, total_steps: int, loop_spe: float):
        self.evaluator, self.probe, self.total, self.loop_spe = evaluator, probe, total_steps, loop_spe

    def due(self, step: int) -> bool:
        return self.evaluator.due(step, self.total)

    def __call__(self, run, step: int) -> None:
        self.timed(run, lambda: self._evaluate(run, step))

    def _evaluate(self, run, step: int) -> None:
        ev = self.evaluator
        event = {"event": "eval", "step": step, "elapsed_s": round(run.elapsed(), 3), **run.clock(step)}
        event.update(ev.evaluate(run.state, step, self.total))
        if self.probe is not None and self.probe.at_evaluation(step, self.loop_spe):
            event.update(self.probe.measure(run.state, step))
        if run.agreement is not None:  # measure_kfac_agreement (llqr.train.agreement)
            event.update(run.agreement.measure(run, step))
        best = run.best_so_far
        if ev.keeps_best and ev.metric in event and (best is None or event[ev.metric] > best["value"]):
            run.best_so_far = {"value": event[ev.metric], "step": step}
            event[f"best_{ev.metric}"] = event[ev.metric]
            event[f"best_{ev.metric}_step"] = step
            if run.best_ckpt is not None:  # the best model so far, by full valid BLEU
                run.best_ckpt.save(step, run.state.as_tree(), {"step": step, ev.metric: event[ev.metric]})
        run.log.write(event)
        run.history.append(event)


class MeasureNoise(_Timed):
    """``noise_stats_every``: the noise statistics on their own schedule (the SVAG study: at every
    epoch's start), as 'noise' events, also kept in the loop's ``noise_history``."""

    def __init__(self, probe, loop_spe: float):
        self.probe, self.loop_spe = probe, loop_spe

    def due(self, step: int) -> bool:
        return self.probe.on_schedule(step, self.loop_spe)

    def __call__(self, run, step: int) -> None:
        event = {"event": "noise", "step": step, "elapsed_s": round(run.elapsed(), 3), **run.clock(step)}
        event.update(self.timed(run, lambda: self.probe.measure(run.state, step)))
        run.log.write(event)
        run.noise_history.append(event)


class FitPreconditioner(_Timed):
    """The LLQR refresh: fit P's blocks on ``precond_batch_size`` examples from the train stream
    every ``update_preconditioner_every`` steps (scheduled) until ``update_preconditioner_until``."""

    def __init__(self, cfg, schedules, total_steps: int):
        self.cfg, self.lr, self.ema, self.every = cfg, schedules["precond_lr"], schedules["ema"], schedules["every"]
        self.until = cfg.update_preconditioner_until if cfg.update_preconditioner_until is not None else total_steps + 1

    def due(self, step: int) -> bool:
        return step < self.until and step % max(1, int(round(float(self.every(step))))) == 0

    def __call__(self, run, step: int) -> None:
        self.timed(run, lambda: self._fit(run, step))

    def _fit(self, run, step: int) -> None:
        fx, fy = run.source.fit_batch(self.cfg.precond_batch_size)
        state = run.state
        blocks, cost0, cost1 = run.steps.llqr_fit(get_blocks(state.opt_state), state.params, state.batch_stats,
                                                  fx, fy, float(self.lr(step)), float(self.ema(step)))
        run.state = state.replace(opt_state=set_blocks(state.opt_state, blocks))
        run.log.write({"event": "precond", "step": step, "elapsed_s": round(run.elapsed(), 3),
                       "lqr_cost_first": float(cost0), "lqr_cost_last": float(cost1), **block_stats(blocks),
                       **(block_skews(blocks) if self.cfg.measure_asymmetry else {})})


class RefreshFactors:
    """The Kronecker optimizers' refresh (SINGD, IKFAC, KFAC): every ``factor_update_every`` steps,
    factors from the step's own batch. Not during SAM steps, whose update has no factors."""

    def __init__(self, cfg, sam_from: int | None):
        self.every, self.sam_from = cfg.factor_update_every, sam_from

    def due(self, step: int) -> bool:
        return step % self.every == 0 and (self.sam_from is None or step < self.sam_from)

    def __call__(self, run, step: int) -> None:
        run.state = run.steps.refresh_factors(run.state, run.source.peek(step))


class StepAccuracy:
    """``log_step_accuracy``: the sum of each step's training-mode accuracy on its own batch since
    the last train event, kept on the device (adding syncs nothing); ``take`` reads and resets it.
    Its state rides in the checkpoint's metadata, so a resumed interval is the uninterrupted one."""

    def __init__(self):
        self.total, self.steps = 0.0, 0

    def add(self, accuracy) -> None:
        self.total, self.steps = self.total + accuracy, self.steps + 1

    def take(self) -> dict:
        out = {"step_accuracy": float(self.total) / self.steps if self.steps else None,
               "step_accuracy_steps": self.steps}
        self.total, self.steps = 0.0, 0
        return out

    def meta(self) -> dict:
        return {"step_accuracy_sum": float(self.total), "step_accuracy_steps": self.steps}

    def restore(self, meta: dict) -> None:
        self.total, self.steps = meta.get("step_accuracy_sum", 0.0), meta.get("step_accuracy_steps", 0)


class LogTrain:
    """At logging points: the train loss and accuracy on the step's last micro-batch (and with
    ``log_step_accuracy`` the interval's mean per-step accuracy); at report points, a console line
    with speed and ETA. Both sync with the device (divergence check)."""

    def __init__(self, cfg, evaluator, total_steps: int):
        self.cfg, self.evaluator, self.total = cfg, evaluator, total_steps
        self.report_every = cfg.report_freq or cfg.logging_freq
        self.rate_t, self.rate_s = None, None

    def due(self, step: int) -> bool:
        return periodic(step, self.cfg.logging_freq, self.total) or step % self.report_every == 0

    def __call__(self, run, step: int) -> None:
        run.pending.check()
        run.timer.sync(step)
        loss = float(run.loss)
        last_x = jax.tree_util.tree_map(lambda a: a[-1], run.batch.xs)
        acc = None if run.steps.train_accuracy is None else float(  # regression: no accuracy
            run.steps.train_accuracy(run.state.params, run.state.batch_stats, last_x, run.batch.ys[-1]))
        if periodic(step, self.cfg.logging_freq, self.total):
            event = {"event": "train", "step": step, "elapsed_s": round(run.elapsed(), 3), "train_loss": loss,
                     **({} if acc is None else {"train_accuracy": acc})}
            if run.step_accuracy is not None:
                event.update(run.step_accuracy.take())
            run.log.write(event)
        if step % self.report_every == 0:
            self._report(run, step, loss, acc)

    def _report(self, run, step: int, loss: float, acc: float | None) -> None:
        now = time.time()
        if self.rate_s is None:
            self.rate_s = run.start_step
        rate = (step - self.rate_s) / (now - self.rate_t) if self.rate_t and now > self.rate_t else 0.0
        self.rate_t, self.rate_s = now, step
        ev = self.evaluator
        scored = [e for e in run.history if ev.metric in e]
        last = f" {ev.label} {scored[-1][ev.metric]:{'.2f' if ev.mode == 'max' else '.4g'}}" if scored else ""
        eta = fmt_eta((self.total - 1 - step) / rate) if rate else "?"
        acc_note = "" if acc is None else f" train_acc {acc:.1f}%"
        run.say(f"step {step}/{self.total - 1} loss {loss:.4f}{acc_note}{last}"
                f" | {rate:.1f} steps/s | ETA {eta}")
