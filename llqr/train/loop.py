"""The training runner: one cell from resolved config to summary.json / metrics.jsonl / record.json.

Step accounting, eval and logging cadence follow the reference runner (docs/algorithms.md, the
training loop): ``total_steps = floor(mbpe * epochs / grad_acc) + 1`` with a final no-update
sentinel step, eval before the update at ``periodic(s, test_eval_freq)``. A SAM mode runs its own
jitted step from ``start_sam_after_step`` on. Deliberate deviations (docs/fidelity.md): the data
stream is seeded and replayable, a resumed run continues bit-exactly, every run ends with an
explicit final evaluation, and fisher_sam fits no P.

The parts: ``steps`` (jitted step functions), ``state`` (the typed train state), ``batches`` (one
batch source per regime), ``actions`` (periodic actions), ``progress`` (log, timer, signals),
``outputs`` (the declared outputs). ``run`` is setup plus the loop.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jax
import optax

from ..config import RunConfig
from ..config.families import KRONECKER_OPTIMIZERS
from ..config.hashing import config_hash, identity_config
from ..config.validate import check_runnable
from ..data import DataError, dataset_dir, load_dataset
from ..data.stream import BatchStream
from ..models import build_model
from ..optim import svag
from . import records
from .accounting import step_accounting
from .actions import (
    Actions,
    Checkpoint,
    Evaluate,
    FitPreconditioner,
    LogTrain,
    MeasureNoise,
    RefreshFactors,
    StepAccuracy,
)
from .agreement import KfacAgreement
from .batches import make_source
from .checkpoint import Checkpointer, prefix_sha256, retire_attempt
from .evaluators import ClassificationEval, RegressionEval
from .fingerprint import attempt_key, dataset_files, fingerprint
from .lock import cell_lock
from .memory import step_memory
from .noise import NOISE_KEYS, NoiseProbe, NoiseWeights, window_average
from .outputs import CellPaths, best, summary, write_outputs
from .parallel import Placement
from .progress import Diverged, MetricsLog, PendingLosses, SignalFlag, StepTimer
from .schedules import build_schedule
from .state import TrainState, init_state
from .steps import build_update_chain, make_steps

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: the workflow's retry resubmits and the run resumes
__all__ = ["PREEMPTED_EXIT_CODE", "Preempted", "run", "step_accounting", "build_update_chain", "CellPaths"]


class Preempted(RuntimeError):
    """SIGTERM/SIGUSR1 arrived; a checkpoint was written at the step boundary."""

    def __init__(self, step: int):
        super().__init__(f"preempted at step {step}; checkpoint saved, run again to resume")
        self.step = step


def run(cfg: RunConfig, *, cell_id: str, results_dir="results", checkpoints_dir="checkpoints", data_root="data",
        command: str = "", prepare_missing: bool = False, inputs=(), record_data_failure: bool = True,
        take_over_lock: bool = False, out=print) -> dict:
    """Train one cell to completion, or resume its interrupted attempt, holding the cell's lock
    (one writer per cell); returns the summary written to disk. ``inputs``: files besides the
    dataset the result depends on (a tuned cell's best.json). ``record_data_failure=False``
    re-raises a DataError instead of recording a ``failed-data`` summary."""
    paths = CellPaths.for_cell(cell_id, results_dir, checkpoints_dir)
    say = lambda m: out(f"[{cell_id}] {m}")  # noqa: E731
    check_runnable(cfg)
    build_model(cfg, num_classes=10)  # fail fast on a model that does not exist yet
    with cell_lock(paths.root, take_over=take_over_lock, out=say):
        t_start, record = time.time(), base_record(cfg, cell_id, command, paths, data_root)
        try:
            data = load_dataset(cfg, data_root, prepare_missing=prepare_missing)
        except DataError as exc:
            if not record_data_failure:
                raise
            say(f"data error: {exc}")
            result = summary(cell_id, "failed-data", None, None, 0, 0, time.time() - t_start, message=str(exc))
            write_outputs(paths, result, record, live_metrics=None)
            return result
        record["dataset_path"] = data.path
        record["inputs"] = fingerprint([*dataset_files(cfg, data, data_root), *map(Path, inputs)])
        paths = replace(paths, key=attempt_key(identity_config(record["config"]), record["inputs"]))
        with contextlib.closing(data):  # streaming datasets' worker pools end with the run, whatever happens
            loop, actions = build_run(cfg, cell_id, data, paths, say)
            with SignalFlag() as flag:
                try:
                    for step in range(loop.start_step, loop.total_steps):
                        if flag.received is not None:
                            loop.pending.check()
                            loop.save(step)
                            loop.log.close()
                            raise Preempted(step)
                        for action in actions.before:
                            if action.due(step):
                                action(loop, step)
                        if step == loop.total_steps - 1:
                            break  # the sentinel: evaluation and checkpoint only
                        for action in actions.refresh:
                            if action.due(step):
                                action(loop, step)
                        loop.batch = loop.source.next(step)
                        loop.state, loop.loss = loop.update(step, loop.state, loop.batch)
                        loop.pending.add(step, loop.loss)
                        for action in actions.after:
                            if action.due(step):
                                action(loop, step)
                    loop.pending.check()
                    result = finish(loop)
                except Diverged as exc:
                    result = finish_diverged(loop, exc.step)
            result["spe"] = loop.spe
            loop.close()
            write_outputs(paths, result, record, live_metrics=loop.log.path)
            retire_attempt(paths.work)
            return result


def base_record(cfg: RunConfig, cell_id: str, command: str, paths: CellPaths, data_root) -> dict:
    """record.json without the outcome: what ran, where, on what."""
    config = cfg.to_dict()
    record = {
        "cell": cell_id,
        "command": command,
        "config": config,
        "config_hash": config_hash(config),
        "seed": {"init_key": cfg.init_key, "rng_seed": cfg.rng_seed, "data_seed": cfg.data_seed},
        "dataset_path": str(dataset_dir(cfg, data_root)),
        "checkpoint_path": str(paths.previous / "orbax"),  # where the finished attempt ends up
        **records.git_state(),
        **records.host_info(),
        "accelerator": records.accelerator(),
        "versions": {"jax": jax.__version__, "optax": optax.__version__, "python": sys.version.split()[0]},
    }
    record["run_id"] = config_hash({"config": config, "commit": record["commit"]})
    return record


@dataclass
class Loop:
    """The loop's context: what the actions read and write."""

    cfg: RunConfig
    cell_id: str
    say: Callable
    state: TrainState
    source: Any
    steps: Any
    evaluator: Any
    log: MetricsLog
    total_steps: int
    spe: float
    loop_spe: float  # loop steps per epoch of data (SVAG: l times spe)
    update: Callable  # (step, state, batch) -> (state, loss): the plain or the SAM step
    start_step: int = 0
    elapsed_before: float = 0.0
    ckpt: Checkpointer | None = None
    best_ckpt: Checkpointer | None = None
    probe: Any = None
    agreement: Any = None  # measure_kfac_agreement: llqr.train.agreement.KfacAgreement
    step_accuracy: StepAccuracy | None = None  # log_step_accuracy
    history: list = field(default_factory=list)
    noise_history: list = field(default_factory=list)  # 'noise' events (noise_stats_every)
    best_so_far: dict | None = None
    pending: PendingLosses = field(default_factory=PendingLosses)
    timer: StepTimer = field(default_factory=StepTimer)
    last_saved: int | None = None
    batch: Any = None
    loss: Any = None
    started: float = field(default_factory=time.time)

    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.started

    def clock(self, step: int) -> dict:
        """The time axes of an event: epochs of data, and SVAG's effective steps (l steps at LR/l
        make one SGD step)."""
        out = {"epoch": round(step / self.loop_spe, 4)}
        if self.cfg.noise == "svag":
            out["effective_step"] = step / self.cfg.svag_l
        return out

    def save(self, step: int) -> None:
        if self.ckpt is None or self.last_saved == step:
            return
        meta = {"step": step, "cursor": self.source.cursor, "elapsed_s": self.elapsed(),
                "metrics_offset": self.log.offset}
        meta["metrics_sha256"] = prefix_sha256(self.log.path, meta["metrics_offset"])
        if self.step_accuracy is not None:
            meta.update(self.step_accuracy.meta())
        self.ckpt.save(step, self.state.as_tree(), meta)
        self.last_saved = step

    def close(self) -> None:
        self.log.close()
        for checkpointer in (self.ckpt, self.best_ckpt):
            if checkpointer is not None:
                checkpointer.close()


def build_run(cfg: RunConfig, cell_id: str, data, paths: CellPaths, say) -> tuple[Loop, Actions]:
    """Everything the loop needs: model, schedules, state (restored when an attempt exists), batch
    source, compiled steps, evaluator and the periodic actions."""
    translation = getattr(data, "task", "classification") == "translation"
    if translation:  # token batches: the stream fixes the number of batches per epoch
        stream = data.make_stream(cfg.max_tokens, cfg.data_seed, num_buckets=cfg.num_buckets)
        spe, total_steps = step_accounting(cfg, stream.batches_per_epoch)
        model, sample_input = build_model(cfg, vocab=(data.src_vocab, data.tgt_vocab)), data.init_inputs()
    else:
        stream = BatchStream(data.train_size, cfg.batch_size, cfg.data_seed)
        spe, total_steps = step_accounting(cfg, data.train_size / cfg.batch_size)
        model = build_model(cfg, num_classes=data.num_classes)
        sample_input = jax.numpy.zeros((1, *data.input_shape), jax.numpy.float32)
    schedules = {name: build_schedule(getattr(cfg, sched), getattr(cfg, value), cfg.total_epochs, spe)
                 for name, sched, value in (("lr", "lr_scheduler", "learning_rate"),
                                            ("rho", "perturbation_rho_scheduler", "perturbation_rho"),
                                            ("precond_lr", "precond_lr_scheduler", "precond_lr"),
                                            ("ema", "ema_scheduler", "ema_decay"),
                                            ("every", "precond_update_scheduler", "update_preconditioner_every"))}
    noise, loop_spe = NoiseWeights(cfg, data.train_size), spe
    if cfg.noise == "svag" and not noise.plain:  # SVAG: l× the steps at LR/l, schedule stretched by l
        schedules["lr"] = svag.svag_schedule(schedules["lr"], cfg.svag_l)
        total_steps, loop_spe = (total_steps - 1) * cfg.svag_l + 1, spe * cfg.svag_l
    tx, main_tx = build_update_chain(cfg, schedules["lr"])
    state = init_state(model, tx, cfg, sample_input)
    data.attach_stream(stream)
    place = Placement(cfg.data_parallel)
    source = make_source(cfg, data, stream, place, noise, translation)
    # an ignored label: translation's padding, a graph's nodes outside the split (None for images)
    steps = make_steps(model, tx, main_tx, cfg, getattr(data, "pad_id", None))
    if translation:
        from .translation import TranslationEval  # beam search and sacrebleu load only for translation

        evaluator = TranslationEval(model, data, cfg, steps.eval_sums)
    else:
        regression = getattr(data, "task", "classification") == "regression"
        evaluator = (RegressionEval if regression else ClassificationEval)(steps.eval_sums, data, cfg)
    sam_from = cfg.start_sam_after_step or 0 if cfg.sam_mode is not None else None  # null or 0: from step 0

    def update(step, state, batch):
        if steps.sam is not None and step >= sam_from:  # before that: the plain step, buffers frozen
            out = steps.sam(state, batch, schedules["rho"](step))
        else:
            out = steps.train(state, batch)
        if loop.step_accuracy is not None:  # log_step_accuracy: the steps also return their accuracy
            loop.step_accuracy.add(out[2])
        return out[:2]

    loop = Loop(cfg, cell_id, say, state, source, steps, evaluator, None, total_steps, spe, loop_spe, update)
    loop.step_accuracy = StepAccuracy() if cfg.log_step_accuracy else None
    _restore(loop, paths, place)
    if cfg.noise_stats_from_epoch is not None and not translation:
        loop.probe = NoiseProbe(model, data, cfg)
    loop.agreement = KfacAgreement.for_run(cfg, model, getattr(data, "pad_id", None))
    if evaluator.keeps_best and cfg.preempt_handling:
        loop.best_ckpt = Checkpointer(paths.work / "best", keep=1)
    actions = Actions(before=[Checkpoint(cfg)] if loop.ckpt is not None else [], refresh=[], after=[
        LogTrain(cfg, evaluator, total_steps)])
    actions.before.append(Evaluate(evaluator, loop.probe, total_steps, loop_spe))
    if loop.probe is not None and cfg.noise_stats_every is not None:
        actions.before.append(MeasureNoise(loop.probe, loop_spe))
    if cfg.use_preconditioner and cfg.sam_mode != "fisher_sam":  # fisher_sam never reads P: no fit
        actions.refresh.append(FitPreconditioner(cfg, schedules, total_steps))
    if cfg.optimizer in KRONECKER_OPTIMIZERS and noise.plain:
        actions.refresh.append(RefreshFactors(cfg, sam_from))
    _announce(loop, place, data, sam_from)
    return loop, actions


def _restore(loop: Loop, paths: CellPaths, place: Placement) -> None:
    """Resume the attempt's latest intact checkpoint, if any; open its metrics log; place the state."""
    cfg, offset = loop.cfg, None
    if cfg.preempt_handling:
        loop.ckpt = Checkpointer(paths.work / "orbax", keep=cfg.keep_checkpoints)
        restored = loop.ckpt.restore_verified(loop.state.as_tree(), paths.work / "metrics.jsonl", out=loop.say)
        if restored is not None:
            loop.start_step, tree, meta = restored
            loop.state = TrainState.from_tree(tree)
            loop.source.cursor, loop.elapsed_before, offset = meta["cursor"], meta["elapsed_s"], meta["metrics_offset"]
            if loop.step_accuracy is not None:
                loop.step_accuracy.restore(meta)
            loop.last_saved = loop.start_step or None
            loop.say(f"resuming from checkpoint at step {loop.start_step}/{loop.total_steps - 1}")
    if cfg.noise == "noisy_gd":  # the sharded unit is the subset's chunk, not B
        place.check_batch("noisy_gd_chunk", loop.source.noise.chunk)
    else:
        place.check_batch("batch_size", cfg.batch_size)
    if cfg.use_preconditioner:
        place.check_batch("precond_batch_size", cfg.precond_batch_size)
    if place.count > 1:
        loop.say(f"data parallel over {place.count} devices: {', '.join(map(str, place.devices))}")
    loop.state = place.replicate(loop.state)
    loop.log = MetricsLog(paths.work / "metrics.jsonl", offset)
    events = loop.log.events()
    loop.history = [e for e in events if e["event"] == "eval"]
    loop.noise_history = [e for e in events if e["event"] == "noise"]
    loop.best_so_far = best(loop.history, loop.evaluator.metric, loop.evaluator.mode)


def _announce(loop: Loop, place: Placement, data, sam_from) -> None:
    cfg = loop.cfg
    sam_note = f", sam {cfg.sam_mode}" + (f" from step {sam_from}" if sam_from else "") if cfg.sam_mode else ""
    loop.say(f"{loop.total_steps - 1} updates ({loop.spe:.3f} steps/epoch), model {cfg.model}{sam_note}, "
             f"data {data.path}")
    if jax.local_device_count() > place.count:
        loop.say(f"note: {jax.local_device_count()} devices visible, training on {place.count} "
                 f"({place.devices[0]}); data_parallel=true shards each batch over all of them")


def finish_diverged(loop: Loop, step: int) -> dict:
    loop.log.write({"event": "diverged", "step": step, "elapsed_s": round(loop.elapsed(), 3)})
    loop.say(f"non-finite loss at step {step}: status diverged")
    ev = loop.evaluator
    return summary(loop.cell_id, "diverged", None, best(loop.history, ev.metric, ev.mode), step, loop.total_steps,
                   loop.elapsed(), diverged_at=step, metric=ev.metric, mode=ev.mode)


def noise_window(loop: Loop, final: dict) -> dict:
    """The summary's noise statistics with a window: the means over the measurements at steps in
    [noise_stats_from_epoch, noise_stats_to_epoch) epochs (the evaluations', and the final one's when
    it lies inside), replacing the final measurement's values."""
    cfg, final_step = loop.cfg, loop.total_steps - 1
    measured = [e for e in loop.history + loop.noise_history if e["step"] != final_step]
    measured += [{"step": final_step, **final}] if "noise_G" in final else []
    window = window_average(measured, cfg.noise_stats_from_epoch * loop.loop_spe,
                            cfg.noise_stats_to_epoch * loop.loop_spe, cfg.batch_size)
    if not window["noise_measurements"]:
        loop.say(f"note: no noise measurement in epochs [{cfg.noise_stats_from_epoch:g}, "
                 f"{cfg.noise_stats_to_epoch:g}): the summary has no noise statistics")
    return window


def finish(loop: Loop) -> dict:
    """The final evaluation (with the noise statistics and the cost columns) and the summary."""
    final_step, ev, history = loop.total_steps - 1, loop.evaluator, loop.history
    final = ev.final(loop.state, history[-1] if history else None, final_step)
    if loop.probe is not None and loop.probe.due(final_step, loop.loop_spe):
        last = [e for e in history + loop.noise_history if e["step"] == final_step and "noise_G" in e][-1:]
        last = last[0] if last else {}
        final.update({k: v for k, v in last.items() if k.startswith("noise_")} or
                     loop.probe.measure(loop.state, final_step))
    if loop.probe is not None and loop.cfg.noise_stats_to_epoch is not None:
        window = noise_window(loop, final)
        for key in NOISE_KEYS:
            final.pop(key, None)
        final.update(window)
    if loop.agreement is not None:
        final.update(loop.agreement.final(loop, final_step))
    # cost columns of the optimizer studies (ours): state size, and speed of this (resumed) process
    final["opt_state_bytes"] = int(sum(x.nbytes for x in jax.tree_util.tree_leaves(loop.state.opt_state)
                                       if hasattr(x, "nbytes")))
    if loop.timer.ms_per_step is not None:
        final["ms_per_step"] = round(loop.timer.ms_per_step, 4)
    final.update(step_memory(loop))  # peak_memory_bytes/_source, step_memory_bytes (llqr.train.memory)
    loop.log.write({"event": "final_eval", "step": final_step, "elapsed_s": round(loop.elapsed(), 3),
                    **loop.clock(final_step), **final})
    loop.save(final_step)
    result = summary(loop.cell_id, "ok", {"value": final[ev.metric], "step": final_step},
                     best(history + [{"step": final_step, **final}], ev.metric, ev.mode), final_step,
                     loop.total_steps, loop.elapsed(), metric=ev.metric, mode=ev.mode)
    result["final_metrics"] = final
    extra = f", test BLEU {final['test_bleu']:.2f}" if "test_bleu" in final else ""
    fmt = ".2f" if ev.mode == "max" else ".4g"  # percent and BLEU, or a loss
    loop.say(f"done: {ev.metric} {final[ev.metric]:{fmt}} (best {result['best']['value']:{fmt}}){extra}")
    return result
