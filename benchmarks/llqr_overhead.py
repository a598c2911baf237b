"""LLQR overhead, measured side by side in one run: plain vs preconditioned step, and one fit.

For each model (the reference MLP 784-100-300-10 at batch 128, a small CNN at batch 128), structure
(diagonal, e-kfac) and divergence (ngd, newton) it reports the plain SGD-momentum step time, the
step time with P applied, one preconditioner fit (50 inner steps on 64 examples), the amortised
ratio (every * preconditioned + fit) / (every * plain) for every = 1000 and 100, and the fit's
compiled temporary memory. Synthetic data; timings are medians of repeated, synchronised calls.

    python benchmarks/llqr_overhead.py [--repeats 20] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from llqr.config import build_config  # noqa: E402
from llqr.models.mlp import MLP  # noqa: E402
from llqr.optim import get_blocks, make_llqr_fit, scale_by_llqr  # noqa: E402
from llqr.train.losses import smoothed_cross_entropy  # noqa: E402


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


def _median_time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile + warm up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _step_fn(model, tx):
    def step(params, opt_state, x, y):
        grads = jax.grad(lambda p: smoothed_cross_entropy(model.apply({"params": p}, x), y))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return jax.jit(step)


def measure(name, structure, divergence, repeats, batch=128, fit_batch=64):
    model, shape = MODELS[name]
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (batch, *shape))
    y = jax.random.randint(key, (batch,), 0, 10)
    params = model.init(key, x[:1])["params"]
    main = optax.sgd(0.05, momentum=0.9)
    plain_tx, llqr_tx = main, optax.chain(scale_by_llqr(structure), main)
    plain_step, llqr_step = _step_fn(model, plain_tx), _step_fn(model, llqr_tx)
    plain_state, llqr_state = plain_tx.init(params), llqr_tx.init(params)
    cfg = build_config({"block_structure": structure, "divergence": divergence, "precond_steps": 50,
                        "ema_decay": 0.9})
    fit = make_llqr_fit(lambda p, bs, xb: model.apply({"params": p}, xb), cfg)
    blocks = get_blocks(llqr_state)
    fit_args = (blocks, params, {}, x[:fit_batch], y[:fit_batch], 1e-3, 0.9)
    memory = fit.lower(*fit_args).compile().memory_analysis()
    t_plain = _median_time(lambda: plain_step(params, plain_state, x, y), repeats)
    t_llqr = _median_time(lambda: llqr_step(params, llqr_state, x, y), repeats)
    t_fit = _median_time(lambda: fit(*fit_args), max(3, repeats // 4))
    row = {"model": name, "structure": structure, "divergence": divergence, "plain_ms": 1e3 * t_plain,
           "precond_ms": 1e3 * t_llqr, "apply_ratio": t_llqr / t_plain, "fit_ms": 1e3 * t_fit,
           "fit_temp_mb": getattr(memory, "temp_size_in_bytes", 0) / 2**20 if memory else None}
    for every in (1000, 100):
        row[f"amortized_{every}"] = (every * t_llqr + t_fit) / (every * t_plain)
    return row


GOALS = {"diagonal": 1.10, "e-kfac": 1.5}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = [measure(m, s, d, args.repeats) for m in MODELS for s in GOALS for d in ("ngd", "newton")]
    header = (f"{'model':20} {'structure':9} {'div':6} {'plain ms':>9} {'P ms':>8} {'apply x':>8} {'fit ms':>9} "
              f"{'amort@1000':>10} {'amort@100':>10} {'fit MiB':>8}")
    print(header)
    for r in rows:
        print(f"{r['model']:20} {r['structure']:9} {r['divergence']:6} {r['plain_ms']:9.3f} {r['precond_ms']:8.3f} "
              f"{r['apply_ratio']:8.2f} {r['fit_ms']:9.1f} {r['amortized_1000']:10.3f} {r['amortized_100']:10.3f} "
              f"{(r['fit_temp_mb'] or 0):8.1f}")
    mlp = [r for r in rows if r["model"].startswith("mlp")]
    verdicts = {s: all(r["amortized_1000"] <= goal for r in mlp if r["structure"] == s) for s, goal in GOALS.items()}
    verdicts["e-kfac apply <= 1.5x"] = all(r["apply_ratio"] <= 1.5 for r in mlp if r["structure"] == "e-kfac")
    for k, ok in verdicts.items():
        goal = f"amortized@1000 <= {GOALS[k]}" if k in GOALS else k
        print(f"goal {k}: {goal}: {'MET' if ok else 'NOT MET'}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "goals": GOALS, "verdicts": verdicts,
                                         "backend": jax.default_backend()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
