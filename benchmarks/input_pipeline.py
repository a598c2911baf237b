"""Input pipeline vs model: can the loaders feed the training step on this machine?

Side by side in one run: CIFAR-10 loader throughput (binary records, reference augmentation,
normalisation; batch 128) next to ResNet-18's training-step consumption rate at batch 128, and
the ImageNet reader (packed shards of 500x375 JPEGs, worker pool, train transform; batch 32)
next to ResNet-50's rate at batch 32, all in images per second. A loader/model ratio above 1
means the pipeline is not the bottleneck. Synthetic data written to a temporary folder.

    python benchmarks/input_pipeline.py [--workers N] [--json PATH]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from llqr.config import build_config  # noqa: E402
from llqr.data import imagenet, load_dataset  # noqa: E402
from llqr.data.stream import BatchStream  # noqa: E402
from llqr.models import build_model  # noqa: E402
from llqr.optim.losses import smoothed_cross_entropy  # noqa: E402


def _quiet(*_args, **_kwargs):
    """A ``log`` that drops the progress lines."""


def _loader_rate(data, batch: int, batches: int) -> float:
    stream = BatchStream(data.train_size, batch, seed=0)
    data.attach_stream(stream)
    data.train_batch(stream.indices(0), 0)  # warm up (pool start, first prefetch)
    t = time.perf_counter()
    for k in range(1, batches + 1):
        data.train_batch(stream.indices(k), k)
    return batches * batch / (time.perf_counter() - t)


def _model_rate(model_name: str, classes: int, shape, batch: int, steps: int) -> float:
    model = build_model(build_config({"model": model_name}), num_classes=classes)
    key = jax.random.PRNGKey(0)
    variables = jax.jit(model.init, static_argnames="train")(key, jnp.zeros((1, *shape)), train=False)
    tx = optax.sgd(0.1, momentum=0.9)

    def step(params, stats, opt_state, x, y):
        def loss(p):
            out, mut = model.apply({"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
            return smoothed_cross_entropy(out, y), mut["batch_stats"]

        (_, stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state

    step = jax.jit(step, donate_argnums=(0, 1, 2))
    x = jax.random.normal(key, (batch, *shape))
    y = jnp.zeros((batch,), jnp.int32)
    state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))
    state = jax.block_until_ready(step(*state, x, y))  # compile
    t = time.perf_counter()
    for _ in range(steps):
        state = step(*state, x, y)
    jax.block_until_ready(state)
    return steps * batch / (time.perf_counter() - t)


def _photo_like_jpeg(rng, w=500, h=375) -> bytes:
    from PIL import Image

    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * rng.uniform(0.2, 0.6) + yy * rng.uniform(0.1, 0.5)) % 256 for _ in range(3)], -1)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _imagenet_folders(root: Path, classes: int = 4, per_class: int = 48, val_per_class: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (folder / f"img_{i:04d}.JPEG").write_bytes(_photo_like_jpeg(rng))
    return root


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=None, help="ImageNet decode workers (default: the reader's)")
    parser.add_argument("--model-steps", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        from fixtures.cifar import write_archive

        write_archive(tmp / "cifar10" / "raw" / "cifar-10-binary.tar.gz", "cifar10", per_file=1024, n_test=16)
        cifar = load_dataset(build_config({"dataset": "cifar10"}), tmp)
        cifar_rate = _loader_rate(cifar, 128, 30)
        resnet18_rate = _model_rate("resnet18", 10, (32, 32, 3), 128, args.model_steps)
        rows.append({"pipeline": "cifar10 (augment+normalise)", "loader_img_s": cifar_rate, "model": "resnet18 b128",
                     "model_img_s": resnet18_rate})

        source = _imagenet_folders(tmp / "imagenet_src")
        imagenet.pack(source, tmp / "imagenet" / "shards", log=_quiet)
        with imagenet.load(tmp / "imagenet", seed=0, workers=args.workers, stage=False, log=_quiet) as inet:
            inet_rate = _loader_rate(inet, 32, 5)
            workers = getattr(inet, "workers", args.workers)
        resnet50_rate = _model_rate("resnet50", 1000, (224, 224, 3), 32, max(1, args.model_steps - 1))
        rows.append({"pipeline": f"imagenet shards (workers={workers})", "loader_img_s": inet_rate,
                     "model": "resnet50 b32", "model_img_s": resnet50_rate})
    for r in rows:
        r["ratio"] = r["loader_img_s"] / r["model_img_s"]
    print(f"backend {jax.default_backend()}, {os.cpu_count()} CPUs")
    print(f"{'pipeline':38} {'loader img/s':>12} {'model':>14} {'model img/s':>11} {'ratio':>7}")
    for r in rows:
        print(f"{r['pipeline']:38} {r['loader_img_s']:12.1f} {r['model']:>14} {r['model_img_s']:11.1f} "
              f"{r['ratio']:7.2f}")
    ok = all(r["ratio"] >= 1.0 for r in rows)
    print(f"goal: loader >= model consumption: {'MET' if ok else 'NOT MET'}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "backend": jax.default_backend(), "cpus": os.cpu_count(),
                                         "goal_met": ok}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
