"""LLQR overhead, measured side by side in one run: plain vs preconditioned step, and one fit.

For each model (the reference MLP 784-100-300-10 at batch 128, a small CNN at batch 128), structure
(diagonal, e-kfac) and divergence (ngd, newton) it reports the plain SGD-momentum step time, the
step time with P applied, one preconditioner fit (50 inner steps on 64 examples), the amortised
ratio (every * preconditioned + fit) / (every * plain) for every = 1000 and 100, the fit's compiled
temporary memory, and the apply's arithmetic relative to a plain step (``apply_flop_ratio``).

Step times: a round is K consecutive real training steps threaded through params and optimizer
state (dispatched asynchronously, one block at the end), K chosen so that a plain round lasts at
least ``--round-ms``; plain and preconditioned rounds alternate, and each time is the median
per-step time over ``--rounds`` rounds of its kind. Applying P does not depend on the divergence, so
the step times are measured once per (model, structure) and shared by both divergences' rows; only
the fit is timed per divergence (compiled ahead of time; median of individually synchronised
fits, a single one for the CNN, whose fit takes seconds).

apply_flop_ratio = apply MACs / plain-step MACs, with apply MACs = sum over kernel leaves (m x n) of
2 m^2 n + 2 m n^2 for e-kfac (QA^T X QG and its rotation back) or one multiply per parameter for
diagonal, and plain-step MACs = 3 x forward MACs (forward, and backward to activations and weights),
forward MACs = XLA's cost-analysis flops of the compiled forward / 2 (for the MLP this is
batch * sum m n). A measured apply ratio near 1 + apply_flop_ratio is bound by arithmetic.

Synthetic data. ``python benchmarks/llqr_overhead.py [--rounds 15] [--json PATH]``
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from llqr.config import build_config
from llqr.models.mlp import MLP
from llqr.optim import get_blocks, make_llqr_fit, scale_by_llqr
from llqr.optim.losses import smoothed_cross_entropy


class SmallCNN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(16, (3, 3))(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(32, (3, 3))(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        return nn.log_softmax(nn.Dense(10)(x.reshape(x.shape[0], -1)))


MODELS = {
    "mlp-784-100-300-10": (MLP(hidden=(100, 300), num_classes=10), (28, 28, 1)),
    "cnn-2conv": (SmallCNN(), (28, 28, 1)),
}
# (warm-up calls, timed calls) of the fit, compiled ahead of time: the CNN's fit takes seconds
FIT_CALLS = {"mlp-784-100-300-10": (1, 7), "cnn-2conv": (0, 1)}
GOALS = {"diagonal": 1.10, "e-kfac": 1.5}


def _step_fn(model, tx):
    """One real training step, params and optimizer state donated as in the runner."""

    def step(params, opt_state, x, y):
        grads = jax.grad(lambda p: smoothed_cross_entropy(model.apply({"params": p}, x), y))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return jax.jit(step, donate_argnums=(0, 1))


def _copy(tree):
    return jax.tree_util.tree_map(jnp.array, tree)


def _round(step, carry, x, y, k):
    """(seconds per step, carry) over k consecutive steps, dispatched back to back."""
    jax.block_until_ready(carry)
    t = time.perf_counter()
    for _ in range(k):
        carry = step(*carry, x, y)
    jax.block_until_ready(carry)
    return (time.perf_counter() - t) / k, carry


def step_times(model, params, structure, x, y, rounds: int, round_s: float):
    """Median per-step seconds of the plain and the preconditioned step over alternating rounds,
    and the steps per round."""
    main = optax.sgd(0.05, momentum=0.9)
    plain_tx, llqr_tx = main, optax.chain(scale_by_llqr(structure), main)
    steps = {"plain": _step_fn(model, plain_tx), "precond": _step_fn(model, llqr_tx)}
    carries = {"plain": (_copy(params), plain_tx.init(params)), "precond": (_copy(params), llqr_tx.init(params))}
    for name in steps:  # compile and warm up
        _, carries[name] = _round(steps[name], carries[name], x, y, 3)
    probe, carries["plain"] = _round(steps["plain"], carries["plain"], x, y, 10)
    k = max(1, math.ceil(round_s / probe))
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name in steps:
            t, carries[name] = _round(steps[name], carries[name], x, y, k)
            times[name].append(t)
    return statistics.median(times["plain"]), statistics.median(times["precond"]), k


def _median_time(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def forward_macs(model, params, x) -> float:
    cost = jax.jit(lambda p, xb: model.apply({"params": p}, xb)).lower(params, x).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) / 2


def apply_macs(blocks) -> float:
    """MACs of P g: e-kfac kernels 2 m^2 n + 2 m n^2, every diagonal entry one."""
    is_block = lambda b: isinstance(b, dict) and all(not isinstance(v, dict) for v in b.values())  # noqa: E731
    total = 0.0
    for block in jax.tree_util.tree_leaves(blocks, is_leaf=is_block):
        if "QA" in block:
            m, n = block["QA"].shape[0], block["QG"].shape[0]
            total += 2 * m * m * n + 2 * m * n * n
        else:
            total += float(np.prod(block["d"].shape))
    return total


def measure(name, structure, rounds, round_s, batch=128, fit_batch=64):
    """The rows of both divergences for one (model, structure), and its steps per round."""
    model, shape = MODELS[name]
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (batch, *shape))
    y = jax.random.randint(key, (batch,), 0, 10)
    params = model.init(key, x[:1])["params"]
    t_plain, t_llqr, k = step_times(model, params, structure, x, y, rounds, round_s)
    blocks = get_blocks(scale_by_llqr(structure).init(params))
    flop_ratio = apply_macs(blocks) / (3 * forward_macs(model, params, x))
    rows = []
    for divergence in ("ngd", "newton"):
        cfg = build_config({"block_structure": structure, "divergence": divergence, "precond_steps": 50,
                            "ema_decay": 0.9})
        fit = make_llqr_fit(lambda p, bs, xb: model.apply({"params": p}, xb), cfg)
        fit_args = (blocks, params, {}, x[:fit_batch], y[:fit_batch], 1e-3, 0.9)
        compiled = fit.lower(*fit_args).compile()
        memory = compiled.memory_analysis()
        t_fit = _median_time(functools.partial(compiled, *fit_args), *FIT_CALLS[name])
        row = {"model": name, "structure": structure, "divergence": divergence, "plain_ms": 1e3 * t_plain,
               "precond_ms": 1e3 * t_llqr, "apply_ratio": t_llqr / t_plain, "apply_flop_ratio": flop_ratio,
               "fit_ms": 1e3 * t_fit,
               "fit_temp_mb": getattr(memory, "temp_size_in_bytes", 0) / 2**20 if memory else None,
               "steps_per_round": k}
        for every in (1000, 100):
            row[f"amortized_{every}"] = (every * t_llqr + t_fit) / (every * t_plain)
        rows.append(row)
    return rows, k


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds of each kind (plain, preconditioned)")
    parser.add_argument("--round-ms", type=float, default=50.0, help="least duration of a plain round")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows, steps_per_round = [], {}
    for m in MODELS:
        for s in GOALS:
            measured, k = measure(m, s, args.rounds, args.round_ms / 1e3)
            rows += measured
            steps_per_round[f"{m}/{s}"] = k
    header = (f"{'model':20} {'structure':9} {'div':6} {'plain ms':>9} {'P ms':>8} {'apply x':>8} {'flop x':>7} "
              f"{'fit ms':>9} {'amort@1000':>10} {'amort@100':>10} {'fit MiB':>8}")
    print(f"step times: median per-step time over {args.rounds} alternating rounds of K steps "
          f"(K: {', '.join(f'{k}={v}' for k, v in steps_per_round.items())})")
    print(header)
    for r in rows:
        print(f"{r['model']:20} {r['structure']:9} {r['divergence']:6} {r['plain_ms']:9.3f} {r['precond_ms']:8.3f} "
              f"{r['apply_ratio']:8.2f} {r['apply_flop_ratio']:7.2f} {r['fit_ms']:9.1f} {r['amortized_1000']:10.3f} "
              f"{r['amortized_100']:10.3f} {(r['fit_temp_mb'] or 0):8.1f}")
    mlp = [r for r in rows if r["model"].startswith("mlp")]
    verdicts = {s: all(r["amortized_1000"] <= goal for r in mlp if r["structure"] == s) for s, goal in GOALS.items()}
    verdicts["e-kfac apply <= 1.5x"] = all(r["apply_ratio"] <= 1.5 for r in mlp if r["structure"] == "e-kfac")
    for k, ok in verdicts.items():
        goal = f"amortized@1000 <= {GOALS[k]}" if k in GOALS else k
        print(f"goal {k}: {goal}: {'MET' if ok else 'NOT MET'}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "goals": GOALS, "verdicts": verdicts,
                                         "backend": jax.default_backend(), "rounds": args.rounds,
                                         "steps_per_round": steps_per_round}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
