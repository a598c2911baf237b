"""The training runner: one cell from resolved config to summary.json / metrics.jsonl / record.json.

Step accounting, eval and logging cadence follow the reference runner (specs/training_surface.md
section 1): ``total_steps = floor(mbpe * epochs / grad_acc) + 1`` with a final no-update sentinel
step, eval before the update at ``periodic(s, test_eval_freq)``. A SAM mode (section 2) runs as a
second jitted step, chosen in Python from ``start_sam_after_step`` on. Deviations, all deliberate:
the data stream is seeded and replayable, a resumed run continues bit-exactly, every run ends with
an explicit final evaluation (the reference has none for classification), and fisher_sam fits no P
(the reference fits one and never reads it).
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..atomic import write_text
from ..config import RunConfig
from ..data import DataError, dataset_dir, load_dataset
from ..data.stream import BatchStream
from ..matrix import config_hash, identity_config
from ..models import build_model, layer_of
from ..optim import block_skews, block_stats, get_blocks, make_llqr_fit, precondition, sam, scale_by_llqr, set_blocks, svag
from ..config.fields import KRONECKER_OPTIMIZERS
from ..optim.capture import kronecker_factors
from ..optim.divergences import RESEARCH_ONLY
from . import records
from .checkpoint import PREVIOUS, Checkpointer, prefix_sha256, retire_attempt
from .fingerprint import attempt_key, dataset_files, fingerprint
from .lock import cell_lock
from .evaluators import ClassificationEval, periodic
from .noise import NoiseProbe, NoiseWeights
from .parallel import Placement
from .losses import accuracy_percent, eval_sums as loss_sums, smoothed_cross_entropy
from .optimizers import apply_updates, build_main_tx
from .schedules import build_schedule

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: the workflow's retry resubmits and the run resumes


class FeatureNotAvailable(RuntimeError):
    """The config asks for something this version of the runner does not implement."""


class Preempted(RuntimeError):
    """SIGTERM/SIGUSR1 arrived; a checkpoint was written at the step boundary."""

    def __init__(self, step: int):
        super().__init__(f"preempted at step {step}; checkpoint saved, run again to resume")
        self.step = step


@dataclass(frozen=True)
class CellPaths:
    results: Path  # declared outputs: summary.json, metrics.jsonl, record.json
    root: Path  # checkpoints/<cell>: its attempts, the previous result; never deleted by Snakemake
    key: str = ""  # the attempt: config + input fingerprint (fingerprint.attempt_key)

    @classmethod
    def for_cell(cls, cell_id: str, results_dir, checkpoints_dir) -> "CellPaths":
        return cls(Path(results_dir) / "cells" / cell_id, Path(checkpoints_dir) / cell_id)

    @property
    def work(self) -> Path:
        """This attempt's checkpoints and live metrics log."""
        return self.root / self.key

    @property
    def previous(self) -> Path:
        return self.root / PREVIOUS


def check_supported(cfg: RunConfig) -> None:
    """Fail before loading data when the config needs a part that is not built yet."""
    if cfg.use_preconditioner and cfg.precond_on_update:
        raise FeatureNotAvailable(
            "precond_on_update=true (P applied after the main optimizer) is research-only in the reference, "
            "whose signs look inconsistent there; it is not implemented"
        )
    if cfg.use_preconditioner and cfg.divergence in RESEARCH_ONLY:
        raise FeatureNotAvailable(f"divergence={cfg.divergence} is research-only and not implemented")
    if cfg.sam_mode is not None:
        for key, default in (("sam_research_base_vector_source", "current_gradient"),
                             ("sam_research_perturb_sign", "ascent")):
            if getattr(cfg, key) != default:
                raise FeatureNotAvailable(
                    f"{key}={getattr(cfg, key)} is a research-only SAM ablation and not implemented "
                    f"(only {key}={default} is)")


def step_accounting(cfg: RunConfig, mbpe: float) -> tuple[float, int]:
    """(steps per epoch, total loop steps incl. the sentinel) from micro-batches per epoch: a float
    ``train_size / batch_size`` for classification, the number of token batches for translation."""
    spe = mbpe / cfg.grad_acc_steps
    total = int((mbpe * cfg.total_epochs) // cfg.grad_acc_steps) + 1
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps + 1)
    return spe, total


class _SignalFlag:
    """Turns SIGTERM/SIGUSR1/SIGINT (Ctrl-C) into a flag the loop reads at step boundaries; a
    second Ctrl-C stops at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self._old = {}

    def __enter__(self):
        try:
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._old = {}
        return self

    def _handle(self, signum, _frame):
        if signum == signal.SIGINT and self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        print(f"received signal {signal.Signals(signum).name}: checkpointing at the next step boundary", flush=True)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def build_update_chain(cfg: RunConfig, lr) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
    """(configured chain, main optimizer). With the preconditioner on, the chain is
    ``chain(scale_by_llqr, main)``: P g enters the main chain, so momentum and weight decay act on
    it. Its state is the tuple (LLQRState, main state), which the vanilla SAM update relies on."""
    main_tx = build_main_tx(cfg, lr)
    if not cfg.use_preconditioner:
        return main_tx, main_tx
    llqr = scale_by_llqr(cfg.block_structure, cfg.precond_identity_scaling, layer_of(cfg.model))
    return optax.chain(llqr, main_tx), main_tx


def _make_fns(model, tx, cfg: RunConfig, main_tx=None, pad: int | None = None):
    """Jitted (train_step, sam_step, eval_sums, train_accuracy) and the LLQR fit.

    ``tx`` is the configured update (``scale_by_llqr`` then ``main_tx`` when the preconditioner is
    on, else ``main_tx`` alone). ``sam_step`` is None without a sam_mode. ``pad`` (translation):
    target positions with that label leave the loss, the accuracy and the P fit.
    """
    ls, scale = cfg.label_smoothing, cfg.precond_identity_scaling
    main_tx = tx if main_tx is None else main_tx

    def variables(params, batch_stats):
        return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}

    low = jnp.bfloat16 if cfg.precision == "bf16" else None

    def apply(params, batch_stats, x, **kw):
        """The model with bf16 inputs under precision=bf16 (float inputs only; token ids stay
        ints); outputs in float32, so losses and metrics are computed in full precision."""
        if low is not None:
            x = jax.tree_util.tree_map(lambda a: a.astype(low) if jnp.issubdtype(a.dtype, jnp.floating) else a, x)
        out = model.apply(variables(params, batch_stats), x, **kw)
        return jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), out) if low is not None else out

    def loss_fn(params, batch_stats, x, y, key, w=None):
        if batch_stats:
            out, mut = apply(params, batch_stats, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"])
            batch_stats = mut["batch_stats"]
        else:
            out = apply(params, batch_stats, x, train=True, rngs={"dropout": key})
        return smoothed_cross_entropy(out, y, ls, pad, weights=w), batch_stats

    def accumulate(params, batch_stats, key, xs, ys, coeffs=None, ws=None):
        """Mean loss and mean gradient over the stacked micro-batches at fixed params, BN stats
        threaded through, one key split per micro-batch; also returns the final stats and key.
        ``coeffs`` replace the mean by a weighted sum over micro-batches (SVAG's c1·L1 + c2·L2, or
        sde2's factor); ``ws`` are per-example loss weights (noisy gradient descent)."""

        def micro(carry, batch):
            batch_stats, k = carry
            k, sub = jax.random.split(k)
            x, y, *w = batch
            (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                params, batch_stats, x, y, sub, *w)
            return (batch_stats, k), (loss, grads)

        batches = (xs, ys) if ws is None else (xs, ys, ws)
        (batch_stats, key), (losses, grads) = jax.lax.scan(micro, (batch_stats, key), batches)
        if coeffs is None:
            grads = jax.tree_util.tree_map(lambda g: jnp.mean(g, axis=0), grads)
            return jnp.mean(losses), grads, batch_stats, key
        grads = jax.tree_util.tree_map(lambda g: jnp.tensordot(coeffs.astype(g.dtype), g, axes=1), grads)
        # the reported loss is the plain mean: SVAG's coefficients (negative ones included) shape the
        # gradient noise, not the objective
        return jnp.mean(losses), grads, batch_stats, key

    def llqr_update(grads, opt_state, params):
        """The configured update: P·g into the main chain (P = I/s when the preconditioner is off)."""
        if scale != 1.0 and not cfg.use_preconditioner:  # identity P is applied as I / s
            grads = jax.tree_util.tree_map(lambda g: g / scale, grads)
        return tx.update(grads, opt_state, params)

    def vanilla_update(grads, opt_state, params):
        """The main optimizer alone on g, sharing the configured chain's state: with the
        preconditioner on, that state is (LLQRState, main state); P's part is passed through
        untouched, so momentum, the LR count and the checkpoint layout are the same whichever update
        a step uses."""
        if not cfg.use_preconditioner:
            return main_tx.update(grads, opt_state, params)
        llqr_state, main_state = opt_state
        updates, main_state = main_tx.update(grads, main_state, params)
        return updates, (llqr_state, main_state)

    def precond(opt_state):
        """v -> P·v with the current blocks, as scale_by_llqr applies it (identity P = I/s when off)."""
        if not cfg.use_preconditioner:
            return lambda v: v if scale == 1.0 else jax.tree_util.tree_map(lambda x: x / scale, v)
        blocks = get_blocks(opt_state)
        return lambda v: precondition(cfg.block_structure, blocks, v, scale, layer_of(cfg.model))

    def train_step(state, xs, ys, coeffs=None, ws=None, with_factors=False):
        """One update; ``with_factors`` (Kronecker optimizers, every T steps) also captures the
        layers' Kronecker factors on the step's batch and hands them to the optimizer; ``coeffs`` and
        ``ws`` are the gradient-noise study's weights (see ``accumulate``)."""
        dropout_key, key = jax.random.split(state["dropout_key"])
        params = state["params"]
        loss, grads, batch_stats, _ = accumulate(params, state["batch_stats"], key, xs, ys, coeffs, ws)
        if with_factors:
            factors = kronecker_factors(
                lambda v, x: apply(v["params"], v.get("batch_stats"), x, train=True, rngs={"dropout": key},
                                   mutable=["batch_stats"])[0],
                params, xs[0], ys[0], lambda out, y: smoothed_cross_entropy(out, y, ls, pad),
                batch_stats=state["batch_stats"] or None)
            updates, opt_state = tx.update(grads, state["opt_state"], params, factors=factors)
        else:
            updates, opt_state = llqr_update(grads, state["opt_state"], params)
        new = dict(state, params=apply_updates(cfg, params, updates), opt_state=opt_state)
        new.update(batch_stats=batch_stats, dropout_key=dropout_key)
        return new, loss

    mode = cfg.sam_mode
    # fisher_sam's outer update is always vanilla (P unused, the toggle inert)
    outer = llqr_update if cfg.sam_use_preconditioner_on_update and mode != "fisher_sam" else vanilla_update

    def sam_step(state, xs, ys, rho):
        """One SAM step (specs/training_surface.md section 2). Two-pass modes: centre pass at θ with
        key k, ε from g_c, perturbed pass at θ+ε on the same micro-batches with the key the centre
        pass returned, starting from the step's BN stats (the centre pass's stats are dropped).
        past_fsam: ε from the buffers, one pass at θ+ε with key k. The loss is the perturbed pass's;
        the outer update acts on g_p at θ."""
        dropout_key, key = jax.random.split(state["dropout_key"])
        params, buffers = state["params"], state["sam"]
        eps_of = lambda g_c: jax.lax.stop_gradient(sam.perturbation(  # noqa: E731
            mode, params=params, buffers=buffers, g_c=g_c, rho=rho, precond=precond(state["opt_state"]),
            perturb_mode=cfg.perturb_mode, norm_mode=cfg.norm_mode, gbar_eps=cfg.gbar_eps, asam_eta=cfg.asam_eta,
            fisher_sam_eta=cfg.fisher_sam_eta))
        if mode == "past_fsam":
            g_c, key_p = None, key
        else:
            _, g_c, _, key_p = accumulate(params, state["batch_stats"], key, xs, ys)
        perturbed = jax.tree_util.tree_map(jnp.add, params, eps_of(g_c))
        loss, g_p, batch_stats, _ = accumulate(perturbed, state["batch_stats"], key_p, xs, ys)
        updates, opt_state = outer(g_p, state["opt_state"], params)
        new_buffers = sam.update_buffers(mode, buffers, g_c=g_c, g_p=g_p, beta=cfg.gbar_beta,
                                         perturb_mode=cfg.perturb_mode, gbar_eps=cfg.gbar_eps)
        new = dict(state, params=apply_updates(cfg, params, updates), opt_state=opt_state, sam=new_buffers)
        new.update(batch_stats=batch_stats, dropout_key=dropout_key)
        return new, loss

    def eval_sums(params, batch_stats, x, y):
        return loss_sums(apply(params, batch_stats, x, train=False), y, pad)

    def train_accuracy(params, batch_stats, x, y):
        return accuracy_percent(apply(params, batch_stats, x, train=False), y, pad)

    def fit_log_probs(p, bs, x):
        out = apply(p, bs, x, train=False)
        if pad is None:
            return out
        # padded target positions (prev_output is pad exactly there) add no divergence curvature
        return jnp.where((x[1] != pad)[..., None], out, 0.0)

    fit = make_llqr_fit(fit_log_probs, cfg, ignore_index=pad, layer_of=layer_of(cfg.model))
    sam_jit = jax.jit(sam_step, donate_argnums=0) if mode is not None else None
    step_jit = jax.jit(train_step, donate_argnums=0, static_argnames="with_factors")
    return step_jit, sam_jit, jax.jit(eval_sums), jax.jit(train_accuracy), fit


def _stack(trees):
    return jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *trees)


def _draw(data, stream, cursor: int, count: int):
    """``count`` consecutive stream batches from ``cursor``, stacked on a new leading axis (inputs
    may be a tuple of arrays, as the translation model's (source, shifted target))."""
    batches = [data.train_batch(stream.indices(cursor + i), cursor + i) for i in range(count)]
    return _stack([b[0] for b in batches]), np.stack([b[1] for b in batches])


def _draw_fit_batch(data, stream, cursor: int, cfg) -> tuple[object, np.ndarray, int]:
    """The P-fit batch: ``precond_batch_size`` examples from the train stream at ``cursor`` and the
    number of stream batches it used (the reference concatenates batches until it has enough)."""
    if hasattr(data, "fit_batch"):  # translation: one fixed padded shape, so the fit compiles once
        return data.fit_batch(stream, cursor, cfg.precond_batch_size)
    n_batches = -(-cfg.precond_batch_size // cfg.batch_size)
    fx, fy = _draw(data, stream, cursor, n_batches)
    return fx.reshape(-1, *fx.shape[2:])[: cfg.precond_batch_size], fy.reshape(-1)[: cfg.precond_batch_size], n_batches


def _fmt_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class StepTimer:
    """Wall milliseconds per update, amortised over the windows between two host syncs (the
    logging points), with evaluations, P fits and checkpoints taken out and the first window
    (compilation) left out; it includes the periodic Kronecker-factor steps."""

    def __init__(self):
        self.mark, self.mark_step, self.excluded = None, None, 0.0
        self.seconds, self.steps = 0.0, 0

    def exclude(self, seconds: float) -> None:
        self.excluded += seconds

    def sync(self, step: int) -> None:
        """Called right after the device finished step ``step``."""
        now = time.perf_counter()
        if self.mark is not None:
            self.seconds += now - self.mark - self.excluded
            self.steps += step - self.mark_step
        self.mark, self.mark_step, self.excluded = now, step, 0.0

    @property
    def ms_per_step(self) -> float | None:
        return 1000.0 * self.seconds / self.steps if self.steps else None


class MetricsLog:
    """Append-only JSONL in the work dir; truncated to the checkpoint's offset on resume."""

    def __init__(self, path: Path, offset: int | None):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if offset is None:
            path.write_text("")
        else:
            with open(path, "r+b") as fh:
                fh.truncate(offset)
        self._fh = open(path, "a")

    @property
    def offset(self) -> int:
        self._fh.flush()
        return self._fh.tell()

    def events(self) -> list[dict]:
        self._fh.flush()
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def write(self, event: dict) -> None:
        self._fh.write(json.dumps(event, sort_keys=True) + "\n")
        self._fh.flush()

    def close(self):
        self._fh.close()


def run(cfg: RunConfig, *, cell_id: str, checkpoints_dir="checkpoints", take_over_lock: bool = False, out=print,
        **kwargs) -> dict:
    """Train one cell to completion (or resume an interrupted attempt) while holding its lock
    (``lock.cell_lock``: one writer per cell); returns the summary written to disk."""
    with cell_lock(Path(checkpoints_dir) / cell_id, take_over=take_over_lock, out=lambda m: out(f"[{cell_id}] {m}")):
        return _run_cell(cfg, cell_id=cell_id, checkpoints_dir=checkpoints_dir, out=out, **kwargs)


def _run_cell(
    cfg: RunConfig,
    *,
    cell_id: str,
    results_dir="results",
    checkpoints_dir="checkpoints",
    data_root="data",
    command: str = "",
    prepare_missing: bool = False,
    inputs=(),
    record_data_failure: bool = True,
    out=print,
) -> dict:
    """``run`` without the lock. ``inputs``: files besides the dataset the result depends on (a
    tuned cell's best.json). ``record_data_failure=False`` re-raises a DataError instead of
    recording a ``failed-data`` summary (data outside the workflow: the job fails and reruns)."""
    config = cfg.to_dict()
    paths = CellPaths.for_cell(cell_id, results_dir, checkpoints_dir)
    build_model(cfg, num_classes=10)  # fail fast on a model that does not exist yet
    check_supported(cfg)
    t_start = time.time()
    base_record = {
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
    base_record["run_id"] = config_hash({"config": config, "commit": base_record["commit"]})

    try:
        data = load_dataset(cfg, data_root, prepare_missing=prepare_missing)
    except DataError as exc:
        if not record_data_failure:
            raise
        out(f"[{cell_id}] data error: {exc}")
        summary = _summary(cell_id, "failed-data", None, None, 0, 0, time.time() - t_start, message=str(exc))
        _write_outputs(paths, summary, base_record, live_metrics=None)
        return summary
    base_record["dataset_path"] = data.path
    base_record["inputs"] = fingerprint([*dataset_files(cfg, data, data_root), *map(Path, inputs)])
    paths = replace(paths, key=attempt_key(identity_config(config), base_record["inputs"]))
    with contextlib.closing(data):  # worker pools of streaming datasets end with the run, whatever happens

        translation = getattr(data, "task", "classification") == "translation"
        if translation:  # token batches: the stream fixes the number of batches per epoch
            stream = data.make_stream(cfg.max_tokens, cfg.data_seed, num_buckets=cfg.num_buckets)
            spe, total_steps = step_accounting(cfg, stream.batches_per_epoch)
            model = build_model(cfg, vocab=(data.src_vocab, data.tgt_vocab))
            sample_input = data.init_inputs()
        else:
            stream = BatchStream(data.train_size, cfg.batch_size, cfg.data_seed)
            spe, total_steps = step_accounting(cfg, data.train_size / cfg.batch_size)
            model = build_model(cfg, num_classes=data.num_classes)
            sample_input = jnp.zeros((1, *data.input_shape), jnp.float32)
        lr = build_schedule(cfg.lr_scheduler, cfg.learning_rate, cfg.total_epochs, spe)
        noise = NoiseWeights(cfg, data.train_size)
        loop_spe = spe  # loop steps per epoch of data (the noise probe's clock)
        if cfg.noise == "svag" and not noise.plain:  # SVAG: l× the steps at LR/l, schedule stretched by l
            lr = svag.svag_schedule(lr, cfg.svag_l)
            total_steps = (total_steps - 1) * cfg.svag_l + 1
            loop_spe = spe * cfg.svag_l
        tx, main_tx = build_update_chain(cfg, lr)
        rho = build_schedule(cfg.perturbation_rho_scheduler, cfg.perturbation_rho, cfg.total_epochs, spe)
        sam_from = cfg.start_sam_after_step or 0  # null or 0: SAM from the first step
        # fisher_sam never reads P, so it is not fitted (the reference fits it anyway and discards it)
        fit_precond = cfg.use_preconditioner and cfg.sam_mode != "fisher_sam"
        precond_lr = build_schedule(cfg.precond_lr_scheduler, cfg.precond_lr, cfg.total_epochs, spe)
        ema = build_schedule(cfg.ema_scheduler, cfg.ema_decay, cfg.total_epochs, spe)
        every = build_schedule(cfg.precond_update_scheduler, cfg.update_preconditioner_every, cfg.total_epochs, spe)
        until = cfg.update_preconditioner_until if cfg.update_preconditioner_until is not None else total_steps + 1
        # one compiled init: eager init compiles every initializer's random draw separately (minutes for a CNN on CPU)
        init = jax.jit(model.init, static_argnames="train")
        variables = init(jax.random.PRNGKey(cfg.init_key), sample_input, train=False)
        params = variables["params"]
        if cfg.precision == "bf16":  # params (hence activations and optimizer state) in bfloat16
            params = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), params)
        kronecker = cfg.optimizer in KRONECKER_OPTIMIZERS
        state = {
            "params": params,
            "batch_stats": variables.get("batch_stats", {}),
            # one buffer per leaf: an init may reuse an array in two places, and the step donates its state
            "opt_state": jax.tree_util.tree_map(jnp.copy, tx.init(params)),
            "dropout_key": jax.random.PRNGKey(cfg.rng_seed),
        }
        if cfg.sam_mode is not None:  # SAM buffers live in the state, so checkpoints carry them
            state["sam"] = sam.init_buffers(cfg.sam_mode, params)
        data.attach_stream(stream)
        cursor, start_step, elapsed_before, offset = 0, 0, 0.0, None
        ckpt = Checkpointer(paths.work / "orbax", keep=cfg.keep_checkpoints) if cfg.preempt_handling else None
        restored = ckpt.restore_verified(state, paths.work / "metrics.jsonl", out=lambda m: out(f"[{cell_id}] {m}")) \
            if ckpt is not None else None
        if restored is not None:
            start_step, state, meta = restored
            cursor, elapsed_before, offset = meta["cursor"], meta["elapsed_s"], meta["metrics_offset"]
            out(f"[{cell_id}] resuming from checkpoint at step {start_step}/{total_steps - 1}")
        place = Placement(cfg.data_parallel)
        place.check_batch("batch_size", cfg.batch_size)
        if cfg.use_preconditioner:
            place.check_batch("precond_batch_size", cfg.precond_batch_size)
        if place.count > 1:
            out(f"[{cell_id}] data parallel over {place.count} devices: {', '.join(map(str, place.devices))}")
        state = place.replicate(state)
        log = MetricsLog(paths.work / "metrics.jsonl", offset)
        history = [e for e in log.events() if e["event"] == "eval"]
        pad = data.pad_id if translation else None
        train_step, sam_step, eval_sums, train_acc, llqr_fit = _make_fns(model, tx, cfg, main_tx, pad)
        if translation:
            from .translation import TranslationEval  # beam search and sacrebleu load only for translation

            evaluator = TranslationEval(model, data, cfg, eval_sums)
        else:
            evaluator = ClassificationEval(eval_sums, data, cfg)
        best_ckpt = None
        if evaluator.keeps_best and cfg.preempt_handling:
            best_ckpt = Checkpointer(paths.work / "best", keep=1)
        best_so_far = _best(history, evaluator.metric, "max")
        report_every = cfg.report_freq or cfg.logging_freq
        run_start = time.time()
        elapsed = lambda: elapsed_before + time.time() - run_start  # noqa: E731
        last_saved = start_step if start_step else None
        pending: list = []  # (step, device loss) not yet checked for NaN
        diverged_at = None
        rate_t, rate_s = None, start_step
        timer = StepTimer()
        # SVAG's time axis: l steps at LR/l make one SGD step (surfaces may plot against it)
        # and every evaluation's epoch of data (the budget studies plot learning curves against it)
        svag_clock = (lambda s: {"effective_step": s / cfg.svag_l}) if cfg.noise == "svag" else (lambda s: {})

        def effective(s):
            return {"epoch": round(s / loop_spe, 4), **svag_clock(s)}
        probe = NoiseProbe(model, data, cfg) if cfg.noise_stats_from_epoch is not None and not translation else None
        sam_note = ""
        if cfg.sam_mode is not None:
            sam_note = f", sam {cfg.sam_mode}" + (f" from step {sam_from}" if sam_from else "")
        out(f"[{cell_id}] {total_steps - 1} updates ({spe:.3f} steps/epoch), model {cfg.model}{sam_note}, data {data.path}")
        if jax.local_device_count() > place.count:
            out(f"[{cell_id}] note: {jax.local_device_count()} devices visible, training on {place.count} "
                f"({place.devices[0]}); data_parallel=true shards each batch over all of them")

        def check_finite() -> int | None:
            if not pending:
                return None
            values = np.asarray(jax.device_get([loss for _s, loss in pending]))
            bad = np.flatnonzero(~np.isfinite(values))
            first = pending[bad[0]][0] if bad.size else None
            pending.clear()
            return first

        def save(step: int):
            nonlocal last_saved
            if ckpt is None or last_saved == step:
                return
            meta = {"step": step, "cursor": cursor, "elapsed_s": elapsed(), "metrics_offset": log.offset}
            meta["metrics_sha256"] = prefix_sha256(log.path, meta["metrics_offset"])
            ckpt.save(step, state, meta)
            last_saved = step

        with _SignalFlag() as flag:
            step = start_step
            while step < total_steps:
                if flag.received is not None:
                    diverged_at = check_finite()
                    if diverged_at is None:
                        save(step)
                        log.close()
                        raise Preempted(step)
                    break
                if cfg.preempt_handling and step > 0 and step % cfg.checkpoint_freq == 0:
                    diverged_at = check_finite()
                    if diverged_at is not None:
                        break
                    t_save = time.perf_counter()
                    save(step)
                    timer.exclude(time.perf_counter() - t_save)
                if evaluator.due(step, total_steps):
                    t_eval = time.perf_counter()
                    event = {"event": "eval", "step": step, "elapsed_s": round(elapsed(), 3), **effective(step)}
                    event.update(evaluator.evaluate(state, step, total_steps))
                    if probe is not None and probe.due(step, loop_spe):
                        event.update(probe.measure(state, step))
                    timer.exclude(time.perf_counter() - t_eval)
                    if evaluator.keeps_best and evaluator.metric in event and (
                            best_so_far is None or event[evaluator.metric] > best_so_far["value"]):
                        best_so_far = {"value": event[evaluator.metric], "step": step}
                        event[f"best_{evaluator.metric}"] = best_so_far["value"]
                        event[f"best_{evaluator.metric}_step"] = step
                        if best_ckpt is not None:  # the best model so far, by full valid BLEU
                            best_ckpt.save(step, state, {"step": step, evaluator.metric: best_so_far["value"]})
                    log.write(event)
                    history.append(event)
                if step == total_steps - 1:
                    break  # sentinel: eval and checkpoint only
                if fit_precond and step < until and step % max(1, int(round(float(every(step))))) == 0:
                    t_fit = time.perf_counter()
                    fx, fy, n_batches = _draw_fit_batch(data, stream, cursor, cfg)
                    fx, fy = place.flat((fx, fy))
                    cursor += n_batches
                    blocks, cost0, cost1 = llqr_fit(
                        get_blocks(state["opt_state"]), state["params"], state["batch_stats"], fx, fy,
                        float(precond_lr(step)), float(ema(step)))
                    state = dict(state, opt_state=set_blocks(state["opt_state"], blocks))
                    event = {"event": "precond", "step": step, "elapsed_s": round(elapsed(), 3),
                             "lqr_cost_first": float(cost0), "lqr_cost_last": float(cost1), **block_stats(blocks),
                             **(block_skews(blocks) if cfg.measure_asymmetry else {})}
                    log.write(event)
                    timer.exclude(time.perf_counter() - t_fit)
                if cfg.noise == "noisy_gd":  # the same fixed subset every step, freshly reweighted
                    x, y = data.train_batch(noise.subset, step)
                    xs, ys = _stack([x]), np.stack([y])
                else:
                    xs, ys = place.stacked(_draw(data, stream, cursor, cfg.grad_acc_steps * noise.batches()))
                    cursor += cfg.grad_acc_steps * noise.batches()
                if sam_step is not None and step >= sam_from:  # before that: the plain step, buffers frozen
                    state, loss = sam_step(state, xs, ys, rho(step))
                elif not noise.plain:
                    ws = noise.example_weights(step) if cfg.noise == "noisy_gd" else None
                    state, loss = train_step(state, xs, ys, noise.coeffs(step), ws)
                else:
                    state, loss = train_step(state, xs, ys, with_factors=kronecker and step % cfg.factor_update_every == 0)
                pending.append((step, loss))
                if periodic(step, cfg.logging_freq, total_steps) or step % report_every == 0:
                    diverged_at = check_finite()
                    if diverged_at is not None:
                        break
                    timer.sync(step)
                    loss_v = float(loss)
                    last_x = jax.tree_util.tree_map(lambda a: a[-1], xs)
                    acc = float(train_acc(state["params"], state["batch_stats"], last_x, ys[-1]))
                    if periodic(step, cfg.logging_freq, total_steps):
                        log.write(
                            {"event": "train", "step": step, "elapsed_s": round(elapsed(), 3), "train_loss": loss_v,
                             "train_accuracy": acc}
                        )
                    if step % report_every == 0:
                        now = time.time()
                        rate = (step - rate_s) / (now - rate_t) if rate_t and now > rate_t else 0.0
                        rate_t, rate_s = now, step
                        scored = [e for e in history if evaluator.metric in e]
                        last = f" {evaluator.label} {scored[-1][evaluator.metric]:.2f}" if scored else ""
                        eta = _fmt_eta((total_steps - 1 - step) / rate) if rate else "?"
                        out(
                            f"[{cell_id}] step {step}/{total_steps - 1} loss {loss_v:.4f} train_acc {acc:.1f}%{last}"
                            f" | {rate:.1f} steps/s | ETA {eta}"
                        )
                step += 1
            if diverged_at is None:
                diverged_at = check_finite()

        if diverged_at is not None:
            log.write({"event": "diverged", "step": diverged_at, "elapsed_s": round(elapsed(), 3)})
            out(f"[{cell_id}] non-finite loss at step {diverged_at}: status diverged")
            best = _best(history, evaluator.metric, "max")
            summary = _summary(cell_id, "diverged", None, best, diverged_at, total_steps, elapsed(),
                               diverged_at=diverged_at, metric=evaluator.metric)
        else:
            final_step = total_steps - 1
            final = evaluator.final(state, history[-1] if history else None, final_step)
            if probe is not None and probe.due(final_step, loop_spe):
                last = history[-1] if history and history[-1]["step"] == final_step else {}
                final.update({k: v for k, v in last.items() if k.startswith("noise_")} or probe.measure(state, final_step))
            # cost columns of the optimizer studies (ours): state size, and speed of this (resumed) process
            final["opt_state_bytes"] = int(sum(x.nbytes for x in jax.tree_util.tree_leaves(state["opt_state"])
                                               if hasattr(x, "nbytes")))
            if timer.ms_per_step is not None:
                final["ms_per_step"] = round(timer.ms_per_step, 4)
            log.write({"event": "final_eval", "step": final_step, "elapsed_s": round(elapsed(), 3), **effective(final_step),
                       **final})
            save(final_step)
            series = history + [{"step": final_step, **final}]
            metric = evaluator.metric
            summary = _summary(
                cell_id,
                "ok",
                {"value": final[metric], "step": final_step},
                _best(series, metric, "max"),
                final_step,
                total_steps,
                elapsed(),
                metric=metric,
            )
            summary["final_metrics"] = final
            extra = f", test BLEU {final['test_bleu']:.2f}" if "test_bleu" in final else ""
            out(f"[{cell_id}] done: {metric} {final[metric]:.2f} (best {summary['best']['value']:.2f}){extra}")
        summary["spe"] = spe
        log.close()
        _write_outputs(paths, summary, base_record, live_metrics=log.path)
        for checkpointer in (ckpt, best_ckpt):
            if checkpointer is not None:
                checkpointer.close()
        retire_attempt(paths.work)
        return summary


def _best(series: list[dict], key: str, mode: str) -> dict | None:
    points = [(e[key], e["step"]) for e in series if key in e]
    if not points:
        return None
    pick = max if mode == "max" else min
    value = pick(v for v, _ in points)
    return {"value": value, "step": min(s for v, s in points if v == value)}


def _summary(cell_id, status, final, best, steps, total_steps, wall, *, diverged_at=None, message=None,
             metric="test_accuracy") -> dict:
    return {
        "cell": cell_id,
        "status": status,
        "metric": metric,
        "mode": "max",
        "final": final,
        "best": best,
        "steps": steps,
        "total_steps": total_steps,
        "wall_time_s": round(wall, 3),
        "diverged_at_step": diverged_at,
        "message": message,
    }


def _write_outputs(paths: CellPaths, summary: dict, record: dict, live_metrics: Path | None) -> None:
    """metrics first, summary last: a present summary.json means the other outputs are complete."""
    if live_metrics is not None:
        records.copy_atomic(live_metrics, paths.results / "metrics.jsonl")
    else:  # no training happened (data error): an empty log keeps the declared outputs complete
        write_text(paths.results / "metrics.jsonl", "")
    full_record = dict(record, status=summary["status"], final=summary["final"], best=summary["best"])
    full_record.update(total_steps=summary["total_steps"], spe=summary.get("spe"), wall_time_s=summary["wall_time_s"])
    records.write_json_atomic(paths.results / "record.json", full_record)
    records.write_json_atomic(paths.results / "summary.json", summary)
