"""Second-order optimizers' cost, measured side by side in one run: step time, optimizer-state memory
and the step's peak device memory.

Variants, all on the same model, batch and synthetic data: SGD (heavy-ball, ``optimizer=polyak``,
momentum 0.9: the baseline of the ratios, and LLQR's main optimizer), AdamW, KFAC, IKFAC, SINGD
(dense and diagonal K, C) and LLQR (diagonal and e-kfac P on polyak). The steps are the runner's
own jitted functions (``llqr.train.steps.make_steps``) with the runner's optimizers
(``build_update_chain``), state layout and periodic work:

- KFAC / IKFAC / SINGD: one ``Steps.refresh_factors`` before the step every ``--factor-every`` (T)
  steps, as the runner does (``step % factor_update_every == 0``); the amortised time is measured
  directly over rounds of K steps (K a multiple of T) with the factor steps in place.
- LLQR: one ``llqr_fit`` every ``--precond-every`` steps (``update_preconditioner_every``), on
  ``precond_batch_size`` examples with ``precond_steps`` inner steps; the fit is timed on its own
  (one synchronised call per round, in the first ``--fit-rounds`` rounds) and amortised as
  (T_step * every + T_fit) / every.

Every variant's plain step (no periodic work) is timed too. ``state bytes`` is the sum of ``nbytes``
over the leaves of ``opt_state`` (as the runner's ``opt_state_bytes``), i.e. without the params.
``peak bytes`` is XLA's peak of live buffers in the compiled step (``llqr.train.memory``, the
runner's ``step_memory_bytes``: params, state, batch, activations and temporaries), the larger of
the plain step and the Kronecker factor step; it is per variant on every backend. The allocator's
``peak_bytes_in_use`` (GPU) covers the whole process, i.e. all variants, and is reported once.

Measurements are interleaved: each round times K consecutive steps of every variant in turn
(dispatched back to back, one sync at the end) and the figure is the median over rounds of the
per-step time, so drift (clock boost, other load) hits every variant alike.

Models: ``--model mlp`` the reference MLP 784-100-300-10 (default), ``--model cnn`` the 2-conv net of
``benchmarks/llqr_overhead.py`` (on a 2-core CPU its step takes ~0.5 s and its LLQR fit ~20 s: use
``--rounds 3 --steps 10`` there), ``--model vit`` a small transformer (our ViT: patch 4, width 64,
2 blocks of 2 heads, MLP 128, no dropout; 49 tokens). A comma list (``--model cnn,vit``) measures
each in turn and ends with a side-by-side table of the memory ratios. ``--precision bf16`` runs
every variant with bfloat16 params and inputs (the runner's ``precision=bf16``). The default run
(MLP, fp32) takes about 2 minutes on 2 CPU cores, half of it compilation.

    python benchmarks/second_order.py [--model mlp|cnn|vit[,...]] [--precision fp32|bf16] [--rounds 15]
        [--steps 20] [--factor-every 10] [--precond-every 1000] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.llqr_overhead import SmallCNN
from llqr.config import build_config
from llqr.config.families import KRONECKER_OPTIMIZERS
from llqr.models.mlp import MLP
from llqr.models.vit import ViT
from llqr.optim import get_blocks, set_blocks
from llqr.train.batches import Batch
from llqr.train.memory import device_peak_bytes, jitted_bytes
from llqr.train.state import TrainState
from llqr.train.steps import build_update_chain, make_steps

MODELS = {
    "mlp": ("MLP 784-100-300-10", lambda: MLP(hidden=(100, 300), num_classes=10)),
    "cnn": ("CNN conv16-pool-conv32-pool-dense10", SmallCNN),
    "vit": ("ViT p4 d64 2x(2 heads, MLP 128)", lambda: ViT(num_classes=10, patch=4, dim=64, depth=2, heads=2,
                                                         mlp_dim=128, dropout_rate=0.0, attention_dropout_rate=0.0)),
}

# name -> config values on top of the common ones (lr, momentum, T, every, precision)
VARIANTS = {
    "sgd": {"optimizer": "polyak", "use_preconditioner": False},
    "adamw": {"optimizer": "adamw", "learning_rate": 1e-3, "weight_decay": 5e-4, "use_preconditioner": False},
    "kfac": {"optimizer": "kfac", "use_preconditioner": False},
    "ikfac": {"optimizer": "ikfac", "use_preconditioner": False},
    "singd-dense": {"optimizer": "singd", "singd_structure": "dense", "use_preconditioner": False},
    "singd-diag": {"optimizer": "singd", "singd_structure": "diagonal", "use_preconditioner": False},
    "llqr-diag": {"optimizer": "polyak", "use_preconditioner": True, "block_structure": "diagonal"},
    "llqr-ekfac": {"optimizer": "polyak", "use_preconditioner": True, "block_structure": "e-kfac"},
}


def _tree_bytes(tree) -> int:
    return int(sum(x.nbytes for x in jax.tree_util.tree_leaves(tree) if hasattr(x, "nbytes")))


class Variant:
    """One optimizer on the runner's jitted functions, its state threaded through every call."""

    def __init__(self, name, values, model, xs, ys, key):
        self.name = name
        self.cfg = cfg = build_config(values)
        self.kronecker = cfg.optimizer in KRONECKER_OPTIMIZERS
        self.llqr = bool(cfg.use_preconditioner)
        tx, main_tx = build_update_chain(cfg, cfg.learning_rate)
        self.steps = make_steps(model, tx, main_tx, cfg)
        params = jax.jit(model.init, static_argnames="train")(key, xs[0, :1], train=False)["params"]
        if cfg.precision == "bf16":  # as run(): params (hence activations and optimizer state) in bfloat16
            params = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), params)
        # one buffer per leaf, as run(): the step donates its state
        self.state = TrainState(params=params, batch_stats={},
                                opt_state=jax.tree_util.tree_map(jnp.copy, tx.init(params)), dropout_key=jnp.copy(key))
        self.xs, self.ys = xs, ys
        self.batch = Batch(xs, ys)
        self.fx = xs[0, : cfg.precond_batch_size]
        self.fy = ys[0, : cfg.precond_batch_size]
        self.times = {"step": [], "cycle": [], "fit": []}
        self.count = 0  # steps taken: factor steps land where the runner's would (count % T == 0)
        self.loss = None

    def run_steps(self, k: int, periodic: bool) -> float:
        """Seconds per step over k consecutive steps (Kronecker factor steps in place if periodic)."""
        jax.block_until_ready(self.state)
        T = self.cfg.factor_update_every
        t = time.perf_counter()
        state, loss = self.state, None
        for i in range(k):
            if periodic and self.kronecker and (self.count + i) % T == 0:
                state = self.steps.refresh_factors(state, self.batch)
            state, loss = self.steps.train(state, self.batch)
        jax.block_until_ready((state, loss))
        dt = (time.perf_counter() - t) / k
        self.state, self.loss, self.count = state, loss, self.count + k
        return dt

    def peak_bytes(self) -> int | None:
        """XLA's peak of the compiled step, and of the factor step for the Kronecker optimizers."""
        peaks = [jitted_bytes(self.steps.train, self.state, self.batch)]
        if self.kronecker:
            peaks.append(jitted_bytes(self.steps.refresh_factors, self.state, self.batch))
        peaks = [p for p in peaks if p is not None]
        return max(peaks) if peaks else None

    def fit(self) -> float:
        """Seconds of one LLQR fit, its blocks written into the state as the runner does."""
        s = self.state
        jax.block_until_ready(s)
        t = time.perf_counter()
        blocks, _c0, c1 = self.steps.llqr_fit(get_blocks(s.opt_state), s.params, s.batch_stats, self.fx, self.fy,
                                              float(self.cfg.precond_lr), float(self.cfg.ema_decay))
        jax.block_until_ready((blocks, c1))
        dt = time.perf_counter() - t
        self.state = s.replace(opt_state=set_blocks(s.opt_state, blocks))
        return dt


def measure(model_name: str, precision: str, rounds: int, steps: int, factor_every: int, precond_every: int,
            fit_rounds: int, batch: int, seed: int = 0, variants=None) -> list[dict]:
    if steps % factor_every:
        raise SystemExit(f"--steps {steps} must be a multiple of --factor-every {factor_every}")
    model = MODELS[model_name][1]()
    key = jax.random.PRNGKey(seed)
    xs = jax.random.normal(key, (1, batch, 28, 28, 1))
    ys = jax.random.randint(jax.random.fold_in(key, 1), (1, batch), 0, 10)
    common = {"learning_rate": 0.01, "momentum": 0.9, "factor_update_every": factor_every,
              "update_preconditioner_every": precond_every, "precision": precision}
    runs = []
    for name, values in VARIANTS.items():
        if variants is not None and name not in variants:
            continue
        v = Variant(name, {**common, **values}, model, xs, ys, key)
        v.run_steps(factor_every, periodic=True)  # compile and warm up both steps (a factor step first)
        v.run_steps(factor_every, periodic=True)
        if v.llqr:
            v.fit()  # compile and warm up the fit
        runs.append(v)  # 2 T steps so far, K a multiple of T: every round starts on a factor step
    for r in range(rounds):
        for v in runs:
            v.times["step"].append(v.run_steps(steps, periodic=False))
            if v.kronecker:
                v.times["cycle"].append(v.run_steps(steps, periodic=True))
            if v.llqr and r < fit_rounds:
                v.times["fit"].append(v.fit())
    rows = []
    for v in runs:
        t_step = statistics.median(v.times["step"])
        row = {"variant": v.name, "optimizer": v.cfg.optimizer, "step_ms": 1e3 * t_step,
               "step_spread_ms": 1e3 * (max(v.times["step"]) - min(v.times["step"])),
               "periodic": None, "periodic_every": None, "periodic_ms": None,
               "state_bytes": _tree_bytes(v.state.opt_state), "peak_bytes": v.peak_bytes(),
               "param_bytes": _tree_bytes(v.state.params),
               "final_loss": float(v.loss), "finite": bool(np.isfinite(float(v.loss)))}
        if v.kronecker:
            t_cycle = statistics.median(v.times["cycle"])
            # extra cost of one factor step, derived from the two medians
            row.update(periodic="factor step", periodic_every=factor_every,
                       periodic_ms=1e3 * (t_cycle - t_step) * factor_every, amortized_ms=1e3 * t_cycle,
                       structure=v.cfg.singd_structure if v.cfg.optimizer == "singd" else None)
        elif v.llqr:
            t_fit = statistics.median(v.times["fit"])
            row.update(periodic="llqr_fit", periodic_every=precond_every, periodic_ms=1e3 * t_fit,
                       amortized_ms=1e3 * (t_step * precond_every + t_fit) / precond_every,
                       structure=v.cfg.block_structure, precond_steps=v.cfg.precond_steps,
                       precond_batch_size=v.cfg.precond_batch_size, fit_calls=len(v.times["fit"]))
        else:
            row["amortized_ms"] = 1e3 * t_step
        rows.append(row)
    base = next(r for r in rows if r["variant"] == "sgd")
    for r in rows:
        r["ms_ratio_vs_sgd"] = r["amortized_ms"] / base["amortized_ms"]
        r["step_ratio_vs_sgd"] = r["step_ms"] / base["step_ms"]
        r["bytes_ratio_vs_sgd"] = r["state_bytes"] / base["state_bytes"]
        known = r["peak_bytes"] and base["peak_bytes"]
        r["peak_ratio_vs_sgd"] = r["peak_bytes"] / base["peak_bytes"] if known else None
    return rows


def _ratio(value) -> str:
    return f"{value:6.2f}" if value is not None else f"{'-':>6}"


def print_table(rows: list[dict]) -> None:
    print(f"| {'variant':11} | {'ms/step':>8} | {'× SGD':>6} | {'state bytes':>11} | {'× SGD':>6} | "
          f"{'peak bytes':>11} | {'× SGD':>6} | {'plain ms':>8} | {'periodic ms':>11} | {'finite':6} |")
    print("|" + "|".join("-" * w for w in (13, 10, 8, 13, 8, 13, 8, 10, 13, 8)) + "|")
    for r in rows:
        periodic = f"{r['periodic_ms']:11.1f}" if r["periodic_ms"] is not None else f"{'-':>11}"
        peak = f"{r['peak_bytes']:11d}" if r["peak_bytes"] is not None else f"{'-':>11}"
        print(f"| {r['variant']:11} | {r['amortized_ms']:8.3f} | {r['ms_ratio_vs_sgd']:6.2f} | "
              f"{r['state_bytes']:11d} | {r['bytes_ratio_vs_sgd']:6.2f} | {peak} | {_ratio(r['peak_ratio_vs_sgd'])} | "
              f"{r['step_ms']:8.3f} | {periodic} | {str(r['finite']):6} |")


def print_side_by_side(runs: list[dict]) -> None:
    """Memory ratios to SGD of every variant, one column pair (state, peak) per model."""
    head = " | ".join(f"{r['model'] + ' state':>10} | {r['model'] + ' peak':>10}" for r in runs)
    print(f"| {'variant':11} | {head} |")
    print(f"|{'-' * 13}|" + "|".join(f"{'-' * 12}|{'-' * 12}" for _ in runs) + "|")
    for i, row in enumerate(runs[0]["rows"]):
        cells = " | ".join(f"{r['rows'][i]['bytes_ratio_vs_sgd']:10.2f} | "
                           f"{_ratio(r['rows'][i]['peak_ratio_vs_sgd']):>10}" for r in runs)
        print(f"| {row['variant']:11} | {cells} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mlp", help=f"one of {', '.join(sorted(MODELS))}, or a comma list")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20, help="K: steps per variant per round (a multiple of T)")
    parser.add_argument("--factor-every", type=int, default=10, help="T: Kronecker factor step every T steps")
    parser.add_argument("--precond-every", type=int, default=1000, help="LLQR fit every this many steps")
    parser.add_argument("--fit-rounds", type=int, default=None,
                        help="rounds that also time one LLQR fit (default 5 for mlp, 1 for the others)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--variants", help=f"a comma list of {', '.join(VARIANTS)} (default: all; sgd is always in)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    models = args.model.split(",")
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown --model {', '.join(unknown)} (choose from {', '.join(sorted(MODELS))})")
    variants = None if args.variants is None else {"sgd", *args.variants.split(",")}
    if variants is not None and variants - set(VARIANTS):
        parser.error(f"unknown --variants {', '.join(sorted(variants - set(VARIANTS)))}")
    device = jax.devices()[0].device_kind
    runs = []
    for name in models:
        fit_rounds = args.fit_rounds if args.fit_rounds is not None else (5 if name == "mlp" else 1)
        t0 = time.perf_counter()
        rows = measure(name, args.precision, args.rounds, args.steps, args.factor_every, args.precond_every,
                       min(fit_rounds, args.rounds), args.batch, variants=variants)
        wall = time.perf_counter() - t0
        print(f"{MODELS[name][0]}, batch {args.batch}, {args.precision}, backend {jax.default_backend()} ({device}); "
              f"median of {args.rounds} interleaved rounds x {args.steps} steps; factor step every "
              f"{args.factor_every}, LLQR fit every {args.precond_every}; SGD = polyak (momentum 0.9); {wall:.0f} s")
        print("ms/step: amortised over the periodic work; plain ms: a step without it; periodic ms: one factor "
              "step's extra time (Kronecker) or one fit (LLQR); peak bytes: XLA's compiled peak of the step "
              "(max with the factor step)")
        print_table(rows)
        print()
        runs.append({"rows": rows, "model": name, "model_desc": MODELS[name][0],
                     "fit_rounds": min(fit_rounds, args.rounds), "wall_s": wall})
    if len(runs) > 1:
        print("memory × SGD side by side (state: optimizer state; peak: compiled step peak)")
        print_side_by_side(runs)
    device_peak = device_peak_bytes()
    if device_peak is not None:
        print(f"device peak_bytes_in_use over the whole run (every model and variant): {device_peak}")
    if args.json:
        args.json.write_text(json.dumps({
            "runs": runs, "precision": args.precision, "batch": args.batch, "rounds": args.rounds,
            "steps": args.steps, "factor_every": args.factor_every, "precond_every": args.precond_every,
            "baseline": "polyak", "backend": jax.default_backend(), "device": device,
            "device_peak_bytes": device_peak}, indent=2))
    return 0

if __name__ == "__main__":
    sys.exit(main())
