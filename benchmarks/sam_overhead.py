"""SAM overhead, measured side by side in one run: each SAM mode's step vs the plain step.

The steps are the runner's own jitted functions (``llqr.train.steps.make_steps``) on the reference MLP
784-100-300-10 at batch 128 with synthetic data and heavy-ball SGD. Each mode runs with LLQR off
(``use_preconditioner=false``, vanilla outer update, ``perturb_mode=ema_grad``) and on (P applied in
the perturbation and the update, ``perturb_mode=ema_precond_grad`` where the mode reads it); it is
compared with the plain step of the same LLQR setting. fisher_sam ignores P, so it runs once. The
preconditioner fit is not timed here (``benchmarks/llqr_overhead.py`` does that): P stays at its
identity init, which costs the same to apply as a fitted one.

Measurements are interleaved: each round times K consecutive steps of every variant in turn, and
the figure is the median over rounds of the per-step time, so drift (clock boost, other load)
hits every variant alike. Expected: about 2x for the two-pass modes, about 1x for past_fsam.

    python benchmarks/sam_overhead.py [--rounds 15] [--steps 20] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from llqr.config import build_config  # noqa: E402
from llqr.models.mlp import MLP  # noqa: E402
from llqr.optim import sam  # noqa: E402
from llqr.train.batches import Batch  # noqa: E402
from llqr.train.state import TrainState  # noqa: E402
from llqr.train.steps import build_update_chain, make_steps  # noqa: E402

MODES = (None, "base_sam", "base_fsam", "past_fsam", "asam", "fisher_sam")
PRECOND_READERS = ("base_sam", "base_fsam", "past_fsam")  # modes whose perturbation applies P


def variants():
    """(name, mode, llqr) for every measured step; fisher_sam's update never uses P."""
    out = []
    for llqr in (False, True):
        for mode in MODES:
            if mode == "fisher_sam" and llqr:
                continue
            out.append((f"{mode or 'plain'}{'+llqr' if llqr else ''}", mode, llqr))
    return out


def build_step(mode, llqr: bool, batch: int, seed: int = 0):
    """A jitted step ``f(state) -> state`` closed over one synthetic batch, and its initial state."""
    values = {"optimizer": "polyak", "learning_rate": 0.05, "momentum": 0.9, "sam_mode": mode,
              "use_preconditioner": llqr, "sam_use_preconditioner_on_update": llqr}
    if mode in PRECOND_READERS and llqr:
        values["perturb_mode"] = "ema_precond_grad"
    cfg = build_config(values)
    model = MLP(hidden=(100, 300), num_classes=10)
    key = jax.random.PRNGKey(seed)
    xs = jax.random.normal(key, (1, batch, 28, 28, 1))
    ys = jax.random.randint(key, (1, batch), 0, 10)
    params = model.init(key, xs[0, :1])["params"]
    tx, main_tx = build_update_chain(cfg, cfg.learning_rate)
    steps = make_steps(model, tx, main_tx, cfg)
    state = TrainState(params=params, batch_stats={}, opt_state=tx.init(params), dropout_key=key,
                       sam=sam.init_buffers(mode, params) if mode is not None else None)
    batch = Batch(xs, ys)
    if mode is None:
        return (lambda s: steps.train(s, batch)), state
    rho = jnp.float32(cfg.perturbation_rho)
    return (lambda s: steps.sam(s, batch, rho)), state


def measure(rounds: int, steps: int, batch: int) -> list[dict]:
    runs = []
    for name, mode, llqr in variants():
        step, state = build_step(mode, llqr, batch)
        for _ in range(3):  # compile and warm up
            state, loss = step(state)
        jax.block_until_ready(loss)
        runs.append({"name": name, "mode": mode, "llqr": llqr, "step": step, "state": state, "times": []})
    for _ in range(rounds):
        for r in runs:
            state = r["state"]
            t = time.perf_counter()
            for _ in range(steps):
                state, loss = r["step"](state)
            jax.block_until_ready((state, loss))
            r["times"].append((time.perf_counter() - t) / steps)
            r["state"] = state
    plain = {r["llqr"]: statistics.median(r["times"]) for r in runs if r["mode"] is None}
    rows = []
    for r in runs:
        t = statistics.median(r["times"])
        rows.append({"variant": r["name"], "sam_mode": r["mode"], "llqr": r["llqr"], "step_ms": 1e3 * t,
                     "ratio_vs_plain": t / plain[r["llqr"]],
                     "grads_per_step": 1 if r["mode"] in (None, "past_fsam") else 2,
                     "spread_ms": 1e3 * (max(r["times"]) - min(r["times"]))})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20, help="steps per variant per round")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = measure(args.rounds, args.steps, args.batch)
    print(f"MLP 784-100-300-10, batch {args.batch}, backend {jax.default_backend()} ({jax.devices()[0].device_kind}); "
          f"median of {args.rounds} interleaved rounds x {args.steps} steps")
    print(f"{'variant':18} {'grads':>5} {'ms/step':>9} {'x plain':>8} {'spread ms':>10}")
    for r in rows:
        print(f"{r['variant']:18} {r['grads_per_step']:5d} {r['step_ms']:9.3f} {r['ratio_vs_plain']:8.2f} "
              f"{r['spread_ms']:10.3f}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "rounds": args.rounds, "steps": args.steps,
                                         "batch": args.batch, "backend": jax.default_backend(),
                                         "device": jax.devices()[0].device_kind}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
