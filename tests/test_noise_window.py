"""The noise statistics as the SVAG study reports them: averaged over an epoch window (its LSR runs:
epochs 200-250), measured once per epoch if asked, with the study's sample counts and its
estimator of G_t from the minibatch gradients themselves."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from llqr.config import ConfigError, resolve
from llqr.optim import svag
from llqr.train import noise
from llqr.train.loop import run

B = 64  # digits-mlp's batch: 1438 / 64 = 22.47 steps per epoch


def _run(tmp_path, root, cell, **overrides):
    cfg = resolve("digits-mlp-smoke", {"use_preconditioner": False, "noise_stats_batches": 3, **overrides})
    summary = run(cfg, cell_id=cell, results_dir=tmp_path / "r", checkpoints_dir=tmp_path / "c", data_root=root,
                  out=lambda _line: None)
    events = [json.loads(x) for x in (tmp_path / "r" / "cells" / cell / "metrics.jsonl").read_text().splitlines()]
    return summary, events


def test_the_summary_is_the_mean_of_the_measurements_inside_the_window(tmp_path, digits_root):
    summary, events = _run(tmp_path, digits_root, "w/eval/seed42", noise_stats_from_epoch=0.2,
                           noise_stats_to_epoch=1.0, test_eval_freq=5)
    spe = summary["spe"]
    measured = [e for e in events if e["event"] == "eval" and "noise_G" in e]
    inside = [e for e in measured if 0.2 * spe <= e["step"] < 1.0 * spe]
    assert [e["step"] for e in inside] == [5, 10, 15, 20]
    assert [e["step"] for e in measured if e not in inside] == [25, 30, 35, 40]  # logged, not averaged
    final = summary["final_metrics"]
    g, n = np.mean([e["noise_G"] for e in inside]), np.mean([e["noise_N"] for e in inside])
    assert final["noise_measurements"] == 4
    assert final["noise_G"] == pytest.approx(g, rel=1e-12) and final["noise_N"] == pytest.approx(n, rel=1e-12)
    assert final["noise_ratio"] == pytest.approx(n / (B * g), rel=1e-12)
    assert final["noise_G"] != pytest.approx(np.mean([e["noise_G"] for e in measured]), rel=1e-6)


def test_per_epoch_measurements_with_the_studys_estimator(tmp_path, digits_root):
    """noise_stats_every: 'noise' events at the first step of each period (here half an epoch, so
    the steps reaching 0.5, 1.0, 1.5 epochs: 12, 23, 34); the window averages those."""
    summary, events = _run(tmp_path, digits_root, "w/every/seed42", noise_stats_from_epoch=0.4,
                           noise_stats_to_epoch=1.2, noise_stats_every=0.5, noise_stats_full_grad_examples=0,
                           noise_stats_examples=4 * B)
    spe = summary["spe"]
    scheduled = [e for e in events if e["event"] == "noise"]
    assert [e["step"] for e in scheduled] == [int(np.ceil(j * 0.5 * spe)) for j in (1, 2, 3)] == [12, 23, 34]
    assert not any("noise_G" in e for e in events if e["event"] == "eval")  # not also at evaluations
    final = summary["final_metrics"]
    assert final["noise_measurements"] == 2
    assert final["noise_G"] == pytest.approx(np.mean([e["noise_G"] for e in scheduled[:2]]), rel=1e-12)


def test_without_a_window_the_summary_keeps_the_final_measurement(tmp_path, digits_root):
    summary, events = _run(tmp_path, digits_root, "w/none/seed42", noise_stats_from_epoch=1.5, max_steps=40,
                           test_eval_freq=20)
    final_eval = [e for e in events if e["event"] == "final_eval"][0]
    assert "noise_measurements" not in summary["final_metrics"]
    assert summary["final_metrics"]["noise_G"] == final_eval["noise_G"]


def test_a_window_needs_its_start():
    with pytest.raises(ConfigError, match="noise_stats_to_epoch=250.0 ends the window"):
        resolve("digits-mlp", {"noise_stats_to_epoch": 250})
    with pytest.raises(ConfigError, match="set noise_stats_from_epoch below it"):
        resolve("digits-mlp", {"noise_stats_from_epoch": 250, "noise_stats_to_epoch": 200})


def test_window_average_counts_only_measurements_inside():
    events = [{"step": 3, "noise_G": 9.0, "noise_N": 9.0}, {"step": 4, "noise_G": 1.0, "noise_N": 8.0},
              {"step": 5}, {"step": 6, "noise_G": 3.0, "noise_N": 4.0}, {"step": 7, "noise_G": 9.0, "noise_N": 9.0}]
    assert noise.window_average(events, 4, 7, batch_size=2) == {
        "noise_measurements": 2, "noise_G": 2.0, "noise_N": 6.0, "noise_ratio": 1.5}
    assert noise.window_average(events, 10, 20, batch_size=2) == {"noise_measurements": 0}


@pytest.mark.parametrize("batch,expected", [(2, 6400), (32, 400), (64, 200), (128, 200), (2048, 200)])
def test_the_studys_gradient_count(batch, expected):
    """The study: num = max(200, 12800 // B) minibatch gradients per measurement."""
    cfg = resolve("digits-mlp", {"batch_size": batch, "noise_stats_batches": 200, "noise_stats_examples": 12800})
    assert noise.probe_batches(cfg) == expected
    assert noise.probe_batches(resolve("digits-mlp", {"batch_size": batch})) == 16  # as before: M alone


def test_the_minibatch_estimator_is_the_studys_formula():
    """Without a large-sample gradient, G and N_batch are the study's: the mean squared norm A of
    the M gradients, G = (M·|mean|² − A)/(M − 1), N_batch = A − G."""
    grads = np.random.default_rng(0).normal(0.3, 1.0, size=(7, 11))
    m, a = len(grads), np.mean(np.sum(grads ** 2, axis=1))
    g_study = (m * np.sum(np.mean(grads, axis=0) ** 2) - a) / (m - 1)
    stats = svag.noise_statistics(grads, None, batch_size=4)
    assert float(stats["G"]) == pytest.approx(g_study, rel=1e-5)
    assert float(stats["N_batch"]) == pytest.approx(a - g_study, rel=1e-5)
    assert float(stats["N"]) == pytest.approx(4 * (a - g_study), rel=1e-5)


def test_streaming_and_stacked_measurements_agree(tmp_path, digits_root, monkeypatch):
    """Beyond STACK_MAX gradients the probe sums in a Welford accumulator: the same estimate."""
    from llqr.data import load_dataset
    from llqr.train.loop import build_run
    from llqr.train.outputs import CellPaths

    for full in (4096, 0):
        cfg = resolve("digits-mlp-smoke", {"use_preconditioner": False, "noise_stats_from_epoch": 0.0,
                                           "noise_stats_batches": 6, "preempt_handling": False,
                                           "noise_stats_full_grad_examples": full})
        loop, _ = build_run(cfg, f"s/{full}/seed42", load_dataset(cfg, digits_root),
                            CellPaths.for_cell(f"s/{full}/seed42", tmp_path / "r", tmp_path / "c"), lambda m: None)
        stacked = loop.probe.measure(loop.state, 3)
        monkeypatch.setattr(noise, "STACK_MAX", 2)
        streamed = loop.probe.measure(loop.state, 3)
        monkeypatch.undo()
        loop.close()
        assert streamed == pytest.approx(stacked, rel=1e-4), full
        assert stacked["noise_N"] > 0
    assert jax.numpy.isfinite(stacked["noise_G"])
