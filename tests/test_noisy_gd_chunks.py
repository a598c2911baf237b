"""Noisy gradient descent at the study's size: the step accumulated over chunks of the fixed subset,
each chunk sharded over the devices, computes the whole-subset step; the config rules around it;
and the per-step training accuracy (log_step_accuracy) the study smooths over 100-step intervals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from llqr.config import ConfigError, resolve
from llqr.config.families import MODELS, NORM_KEY_MODELS, OPERATOR_MODELS
from llqr.config.validate import uses_batchnorm
from llqr.workflow.job_checks import check_job

TOL = 2e-6  # max |Δθ| after three float32 steps: only the summation order differs

def three_steps(root, data_root, variants: dict) -> dict:
    """Three noisy-GD steps (256-example subset, digits MLP) through the runner's own parts, per
    variant: the parameters, the last loss and each step's batch shape and device count."""
    from llqr.data import load_dataset
    from llqr.train.loop import build_run
    from llqr.train.outputs import CellPaths

    out = {}
    for name, overrides in variants.items():
        cfg = resolve("digits-mlp-smoke", {"use_preconditioner": False, "noise": "noisy_gd", "noisy_gd_examples": 256,
                                           "mlp_hidden": [32, 16], "preempt_handling": False, "learning_rate": 0.5,
                                           **overrides})
        loop, _ = build_run(cfg, name, load_dataset(cfg, data_root), CellPaths.for_cell(name, root, f"{root}/ck"),
                            lambda m: None)
        shapes = []
        for step in range(3):
            batch = loop.source.next(step)
            sharding = getattr(batch.xs, "sharding", None)  # a host array where nothing is placed
            shapes.append([list(batch.xs.shape[:2]), len(sharding.device_set) if sharding is not None else 1])
            loop.state, loss = loop.update(step, loop.state, batch)
        loop.close()
        out[name] = {"params": [np.asarray(a) for a in jax.tree_util.tree_leaves(loop.state.params)],
                     "loss": float(loss), "shapes": shapes}
    return out


SCRIPT = r"""
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import jax
from test_noisy_gd_chunks import three_steps

assert jax.local_device_count() == 2, jax.local_devices()
out = three_steps(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))
for v in out.values():
    v["params"] = [p.tolist() for p in v["params"]]
print("RESULT" + json.dumps(out))
"""


def _max_diff(a, b) -> float:
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a["params"], b["params"], strict=True))


def test_chunked_steps_equal_the_whole_subset_step(tmp_path, digits_root):
    got = three_steps(tmp_path, digits_root, {"whole": {}, "chunk64": {"noisy_gd_chunk": 64},
                                              "chunk256": {"noisy_gd_chunk": 256},
                                              "seed1": {"noisy_gd_chunk": 64, "data_seed": 1}})
    whole = got["whole"]
    assert whole["shapes"][0] == [[1, 256], 1] and got["chunk64"]["shapes"][0] == [[4, 64], 1]
    # a single chunk is the unchunked step itself, bit for bit
    assert all(np.array_equal(x, y) for x, y in zip(got["chunk256"]["params"], whole["params"], strict=True))
    assert _max_diff(got["chunk64"], whole) < TOL
    assert got["chunk64"]["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    # the control: other noise (another data_seed) moves the parameters far more than TOL
    assert _max_diff(got["seed1"], whole) > 1000 * TOL


@pytest.mark.slow  # a subprocess with two forced devices: 10-20 s of startup and compiles
def test_chunked_sharded_steps_equal_the_whole_subset_step(tmp_path, digits_root):
    """Each chunk split over two (forced) CPU devices, as data_parallel does over a job's GPUs."""
    variants = {"whole": {}, "sharded": {"noisy_gd_chunk": 64, "data_parallel": True}}
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(Path(__file__).parent), str(tmp_path), str(digits_root),
                           json.dumps(variants)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = {k: {**v, "params": [np.asarray(p) for p in v["params"]]}
           for k, v in json.loads(proc.stdout.split("RESULT", 1)[1]).items()}
    assert got["sharded"]["shapes"][0] == [[4, 64], 2]  # four chunks, each split over both devices
    assert _max_diff(got["sharded"], got["whole"]) < TOL
    assert got["sharded"]["loss"] == pytest.approx(got["whole"]["loss"], rel=1e-5)


def test_the_studys_50k_subset_is_accepted_and_sharded_in_chunks():
    over = {"noise": "noisy_gd", "noisy_gd_examples": 50000, "noisy_gd_chunk": 10000, "data_parallel": True,
            "batch_size": 500, "learning_rate": 3.2}
    cfg = resolve("prn32gn-cifar10-svag", over)
    check_job(cfg, devices=4)  # 2,500 examples of each chunk per GPU; B = 500 is only the noise scale
    check_job(resolve("prn32gn-cifar10-svag", {**over, "noisy_gd_examples": None}), devices=5)
    with pytest.raises(ConfigError, match="noisy_gd_chunk=10000 does not split evenly over the job's 3 GPUs"):
        check_job(cfg, devices=3)


@pytest.mark.parametrize("overrides,message", [
    ({"noisy_gd_examples": 50000, "noisy_gd_chunk": 3000}, r"must divide noisy_gd_examples=50000:.*e\.g\. 3125"),
    ({"norm": "bn", "noisy_gd_examples": 50000, "noisy_gd_chunk": 5000},
     "model=svag_preresnet32 \\(BatchNorm\\): each chunk would be normalised with its own batch statistics"),
    ({"noisy_gd_examples": None, "noisy_gd_chunk": 7000}, "must divide the noisy-GD subset, here the whole 50000"),
])
def test_chunks_that_cannot_give_the_whole_subset_step_are_refused_before_a_job(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_job(resolve("prn32gn-cifar10-svag", {"noise": "noisy_gd", **overrides}))


def test_batchnorm_with_the_whole_subset_as_one_chunk_is_still_accepted():
    resolve("prn32-cifar10-svag", {"noise": "noisy_gd", "noisy_gd_examples": 2000, "noisy_gd_chunk": 2000})
    resolve("prn32-cifar10-svag", {"noise": "noisy_gd", "noisy_gd_examples": 2000})
    with pytest.raises(ConfigError, match="not available for translation, SVAG"):
        resolve("digits-mlp", {"noise": "svag", "svag_l": 2, "data_parallel": True, "use_preconditioner": False})


# the models of the token, graph, sequence and operator datasets take no images (their own checks refuse cifar10)
IMAGE_MODELS = [m for m in MODELS
                if m not in ("transformer_iwslt", "grok_transformer", "gcn", "lstm_seq2seq", *OPERATOR_MODELS)]


@pytest.mark.parametrize("model,norm", [(m, n) for m in IMAGE_MODELS for n in (("bn", "gn") if m in NORM_KEY_MODELS
                                                                                else ("bn",))])
def test_the_batchnorm_list_is_what_the_models_do(model, norm):
    """``uses_batchnorm`` (JAX-free, for the validator) against the model's own init: BatchNorm
    models, and only they, keep batch statistics."""
    from llqr.models import build_model

    cfg = resolve("digits-mlp", {"model": model, "norm": norm, "dataset": "cifar10"})
    variables = jax.eval_shape(lambda: build_model(cfg, num_classes=10).init(
        {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, np.zeros((1, 32, 32, 3), np.float32),
        train=False))
    assert ("batch_stats" in variables) == uses_batchnorm(cfg.to_dict()), (model, norm)


# --- the per-step training accuracy (log_step_accuracy) ---------------------------------------------


def _run(tmp_path, root, cell, **overrides):
    from llqr.train.loop import run

    cfg = resolve("digits-mlp-smoke", {"use_preconditioner": False, "max_steps": 13, **overrides})
    summary = run(cfg, cell_id=cell, results_dir=tmp_path / "r", checkpoints_dir=tmp_path / "c", data_root=root,
                  out=lambda _line: None)
    path = tmp_path / "r" / "cells" / cell / "metrics.jsonl"
    return summary, [json.loads(x) for x in path.read_text().splitlines()]


def test_step_accuracy_is_the_interval_mean_of_each_steps_own_batch_accuracy(tmp_path, digits_root):
    """An MLP has no BatchNorm or dropout, so a step's training-mode accuracy on its batch is the
    inference accuracy of the parameters before the update: recomputed here step by step."""
    from llqr.data import load_dataset
    from llqr.train.loop import build_run
    from llqr.train.outputs import CellPaths

    summary, events = _run(tmp_path, digits_root, "a/on/seed42", log_step_accuracy=True)
    _, plain = _run(tmp_path, digits_root, "a/off/seed42")
    train = [e for e in events if e["event"] == "train"]
    assert [e["step_accuracy_steps"] for e in train] == [6, 5]  # steps 0-5 and 6-10 (logging_freq 5)
    # the key adds fields and changes nothing else
    # the step that also counts its hits is another program: its compiled memory differs by a few bytes
    strip = lambda es: [{k: v for k, v in e.items()  # noqa: E731
                         if k not in ("elapsed_s", "ms_per_step", "peak_memory_bytes", "step_memory_bytes")
                         and not k.startswith("step_accuracy")} for e in es]
    assert strip(events) == strip(plain)

    cfg = resolve("digits-mlp-smoke", {"use_preconditioner": False, "max_steps": 13, "preempt_handling": False})
    loop, _ = build_run(cfg, "b/x/seed42", load_dataset(cfg, digits_root),
                        CellPaths.for_cell("b/x/seed42", tmp_path / "r2", tmp_path / "c2"), lambda m: None)
    per_step = []
    for step in range(11):
        batch = loop.source.next(step)
        per_step.append(float(loop.steps.train_accuracy(loop.state.params, loop.state.batch_stats, batch.xs[0],
                                                        batch.ys[0])))
        loop.state, _ = loop.update(step, loop.state, batch)
    loop.close()
    assert train[0]["step_accuracy"] == pytest.approx(np.mean(per_step[:6]), abs=1e-4)
    assert train[1]["step_accuracy"] == pytest.approx(np.mean(per_step[6:]), abs=1e-4)


def test_step_accuracy_over_noisy_gd_chunks_counts_every_subset_example(tmp_path, digits_root):
    runs = {chunk: _run(tmp_path, digits_root, f"c/{chunk}/seed42", noise="noisy_gd", noisy_gd_examples=256,
                        noisy_gd_chunk=chunk, log_step_accuracy=True)[1] for chunk in (None, 32)}
    accs = {c: [e["step_accuracy"] for e in ev if e["event"] == "train"] for c, ev in runs.items()}
    assert accs[32] == pytest.approx(accs[None], abs=1e-3) and len(accs[32]) == 2


def test_step_accuracy_state_rides_in_the_checkpoint():
    from llqr.train.actions import StepAccuracy

    acc = StepAccuracy()
    for value in (50.0, 75.0):
        acc.add(jax.numpy.float32(value))
    resumed = StepAccuracy()
    resumed.restore(json.loads(json.dumps(acc.meta())))
    resumed.add(jax.numpy.float32(100.0))
    assert resumed.take() == {"step_accuracy": 75.0, "step_accuracy_steps": 3}
    assert resumed.take()["step_accuracy_steps"] == 0


@pytest.mark.slow  # three runner runs (about 13 s)
def test_a_resumed_run_logs_the_uninterrupted_step_accuracy(tmp_path, digits_root):
    """Preempted at step 11, inside the interval 11-15 of the train event at step 15."""
    import os
    import signal

    from llqr.train.loop import Preempted, run

    cfg = resolve("digits-mlp-smoke", {"use_preconditioner": False, "max_steps": 17, "log_step_accuracy": True})

    def events(cell):
        path = tmp_path / "r" / "cells" / cell / "metrics.jsonl"
        return [(e["step"], e["step_accuracy"], e["step_accuracy_steps"])
                for e in map(json.loads, path.read_text().splitlines()) if e["event"] == "train"]

    kw = dict(results_dir=tmp_path / "r", checkpoints_dir=tmp_path / "c", data_root=digits_root)
    run(cfg, cell_id="r/once/seed42", out=lambda _line: None, **kw)

    def out(line):
        if "step 10/" in line:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Preempted):
        run(cfg, cell_id="r/twice/seed42", out=out, **kw)
    run(cfg, cell_id="r/twice/seed42", out=lambda _line: None, **kw)
    assert events("r/twice/seed42") == events("r/once/seed42")
    assert [steps for _, _, steps in events("r/once/seed42")] == [6, 5, 5]
