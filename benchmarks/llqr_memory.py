"""Peak memory and time of one LLQR preconditioner fit per route: does the chunked fit follow the chunk?

For each model (the reference MLP 784-100-300-10 on 28x28 inputs; ``MiniResNet``: ResNet-18's stem
and two of its BasicBlocks (width 8, then 16 with a strided projection) on 32x32x3, BatchNorm in
inference mode, since ResNet-18 itself, even at width 8, takes about a minute per fit at batch 256
here), fit batch (``--fit-batches``) and route it compiles the jitted fit of ``make_llqr_fit``
ahead of time and reports

- ``temp_mib``: XLA's compiled memory analysis, ``temp_size_in_bytes`` of the fit (the
  temporaries; arguments and outputs not counted), in MiB;
- ``fit_ms``: the time of one fit after compiling: the median of ``--repeats`` synchronised calls
  after one untimed call, or that one call alone where it took over ``--slow-s`` seconds.

Routes: ``whole`` (full_batch + cached_exact: the whole batch linearised once per fit),
``chunked`` (chunked_lqr_segment at ``--chunk``), ``lowmem`` (lowmem_exact_k, whole batch:
one jvp-of-grad of the batch per product), ``lowmem_full`` (lowmem_exact_full: the same with the
network rematerialised inside each product), ``separable`` (sample_separable_exact at ``--chunk``).
Each fit runs ``--precond-steps`` inner steps (default 2, not the paper's 50, to fit a 2-core CPU
in a few minutes: the memory does not depend on it, the time roughly linearly), block structure
``--structure`` (default diagonal, the config default), divergence ngd. Goal: at fit batch 1024
and chunk 128 the chunked route's temp_mib is at most 0.35 of the whole-batch route's.

Synthetic data. ``python benchmarks/llqr_memory.py [--json PATH]``
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

from llqr.config import build_config  # noqa: E402
from llqr.models.mlp import MLP  # noqa: E402
from llqr.models.resnet18 import BN_MOMENTUM, basic_block  # noqa: E402
from llqr.models.stages import Builder, GlobalAvgPool, LogSoftmax, Relu, StageNet  # noqa: E402
from llqr.optim import get_blocks, make_llqr_fit, scale_by_llqr  # noqa: E402

GOAL = 0.35


class MiniResNet(StageNet):
    """conv3x3/2 -> BN -> ReLU, a ResNet-18 BasicBlock at ``width``, a strided projecting one at
    2 ``width``, global average pool, Dense 10 -> log_softmax."""

    width: int = 8

    @nn.nowrap
    def stages(self):
        b = Builder()
        b.conv("stem_conv", self.width, 3, 2)
        b.bn("stem_bn", BN_MOMENTUM)
        b.add(Relu())
        basic_block(b, "block_0", self.width, 1, project=False)
        basic_block(b, "block_1", 2 * self.width, 2, project=True)
        b.add(GlobalAvgPool())
        b.dense("logits", 10)
        b.add(LogSoftmax())
        return b.items


def routes(chunk: int) -> dict:
    return {
        "whole": ({"llqr_batch_update_mode": "full_batch", "llqr_operator_mode": "cached_exact"}, None),
        "chunked": ({"llqr_batch_update_mode": "chunked_lqr_segment", "llqr_batch_update_chunk_size": chunk}, chunk),
        "lowmem": ({"llqr_operator_mode": "lowmem_exact_k"}, None),
        "lowmem_full": ({"llqr_operator_mode": "lowmem_exact_full"}, None),
        "separable": ({"llqr_second_order_mode": "sample_separable_exact",
                       "llqr_second_order_chunk_size": chunk}, chunk),
    }


def models(resnet_width: int) -> dict:
    return {"mlp-784-100-300-10": (MLP(hidden=(100, 300), num_classes=10), (28, 28, 1)),
            f"mini-resnet-w{resnet_width}": (MiniResNet(width=resnet_width), (32, 32, 3))}


def fit_time(fn, repeats: int, slow_s: float) -> tuple[float, int]:
    """(seconds, timed calls): one call, then the median of ``repeats`` more unless it was slow."""
    t = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t
    if first > slow_s:
        return first, 1
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times), repeats


def measure(name, model, shape, fit_batch, route, overrides, chunk, args):
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (fit_batch, *shape))
    y = jax.random.randint(key, (fit_batch,), 0, 10)
    variables = model.init(key, x[:1])
    params, stats = variables["params"], variables.get("batch_stats", {})
    cfg = build_config({**overrides, "block_structure": args.structure, "divergence": "ngd",
                        "precond_steps": args.precond_steps, "ema_decay": 0.9})
    blocks = get_blocks(scale_by_llqr(cfg.block_structure).init(params))
    fit = make_llqr_fit(lambda p, bs, xb: model.apply({"params": p, "batch_stats": bs}, xb, train=False), cfg)
    fit_args = (blocks, params, stats, x, y, 1e-3, 0.9)
    compiled = fit.lower(*fit_args).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes / 2**20
    seconds, calls = fit_time(lambda: compiled(*fit_args), args.repeats, args.slow_s)
    row = {"model": name, "route": route, "fit_batch": fit_batch, "chunk": chunk, "temp_mib": temp,
           "fit_ms": 1e3 * seconds}
    print(f"{name:20} {route:10} {fit_batch:6} {chunk or '-':>6} {temp:9.2f} {row['fit_ms']:10.1f}  ({calls} timed)",
          flush=True)
    return row


def ratio(rows, model, route, fit_batch):
    pick = {r["route"]: r["temp_mib"] for r in rows if r["model"] == model and r["fit_batch"] == fit_batch}
    return pick[route] / pick["whole"] if route in pick and pick.get("whole") else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit-batches", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--precond-steps", type=int, default=2)
    parser.add_argument("--structure", default="diagonal")
    parser.add_argument("--resnet-width", type=int, default=8, help="the mini ResNet's stem width")
    parser.add_argument("--repeats", type=int, default=5, help="timed fits after the untimed one")
    parser.add_argument("--slow-s", type=float, default=1.0, help="a first fit slower than this is the time")
    parser.add_argument("--models", nargs="+", help="subset of the model names")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    chosen = {k: v for k, v in models(args.resnet_width).items() if not args.models or k in args.models}
    print(f"backend {jax.default_backend()}; structure {args.structure}, divergence ngd, "
          f"precond_steps {args.precond_steps} (reduced from the paper's 50 to bound the run; "
          f"temp_mib does not depend on it)")
    print(f"{'model':20} {'route':10} {'batch':>6} {'chunk':>6} {'temp MiB':>9} {'fit ms':>10}")
    rows = []
    for name, (model, shape) in chosen.items():
        for fit_batch in args.fit_batches:
            for route, (overrides, chunk) in routes(args.chunk).items():
                rows.append(measure(name, model, shape, fit_batch, route, overrides, chunk, args))
    ratios = {}
    top = max(args.fit_batches)
    for name in chosen:
        for route in ("chunked", "separable", "lowmem", "lowmem_full"):
            ratios[f"{name}/{route}"] = ratio(rows, name, route, top)
    for key, value in ratios.items():
        print(f"temp_mib {key} / whole at fit batch {top}, chunk {args.chunk}: {value:.3f}")
    verdicts = {name: ratios[f"{name}/chunked"] <= GOAL for name in chosen}
    for name, ok in verdicts.items():
        print(f"goal {name}: chunked/whole temp_mib <= {GOAL} at fit batch {top}: {'MET' if ok else 'NOT MET'}")
    if args.json:
        args.json.write_text(json.dumps({
            "rows": rows, "ratios_at_largest_fit_batch": ratios, "goal": GOAL, "verdicts": verdicts,
            "backend": jax.default_backend(), "structure": args.structure, "divergence": "ngd",
            "precond_steps": args.precond_steps, "resnet_width": args.resnet_width}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
