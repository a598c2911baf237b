"""The SINGD study's optimizers and bf16 precision through the real runner, and their config rules."""

from __future__ import annotations

import json

import pytest

from llqr.config import ConfigError, resolve
from llqr.train.loop import run
from llqr.workflow.cells import Cell


@pytest.mark.parametrize("overrides", [
    {"optimizer": "kfac", "learning_rate": 0.001},
    pytest.param({"optimizer": "ikfac", "learning_rate": 0.01, "precision": "bf16"}, marks=pytest.mark.slow),
    {"optimizer": "singd", "learning_rate": 0.01, "singd_structure": "tril_toeplitz", "precision": "bf16"},
], ids=["kfac-fp32", "ikfac-bf16", "singd-toeplitz-bf16"])
def test_kronecker_optimizers_train_through_the_runner(tmp_path, digits_root, overrides):
    cfg = resolve("digits-mlp-smoke", {"use_preconditioner": False, "factor_update_every": 3, **overrides})
    summary = run(cfg, cell_id="k/x/seed42", results_dir=tmp_path / "r", checkpoints_dir=tmp_path / "c",
                  data_root=digits_root, out=lambda _line: None)
    assert summary["status"] == "ok", summary
    final = summary["final_metrics"]
    assert final["test_accuracy"] > 50.0 and final["opt_state_bytes"] > 0 and final["ms_per_step"] > 0
    metrics = tmp_path / "r" / "cells" / "k/x/seed42" / "metrics.jsonl"
    events = [json.loads(x) for x in metrics.read_text().splitlines()]
    losses = [e["train_loss"] for e in events if e["event"] == "train"]
    assert losses[-1] < losses[0]


def test_bf16_halves_the_optimizer_state(tmp_path, digits_root):
    sizes = {}
    for precision in ("fp32", "bf16"):
        cfg = resolve("digits-mlp-smoke", {"use_preconditioner": False, "optimizer": "ikfac", "max_steps": 3,
                                           "precision": precision})
        sizes[precision] = run(cfg, cell_id=f"k/{precision}/seed42", results_dir=tmp_path / "r",
                               checkpoints_dir=tmp_path / "c", data_root=digits_root,
                               out=lambda _line: None)["final_metrics"]["opt_state_bytes"]
    assert sizes["bf16"] < 0.6 * sizes["fp32"]  # K, C and the momenta; only the step counters stay int32


@pytest.mark.parametrize("overrides,message", [
    ({"optimizer": "singd", "use_preconditioner": True},
     "is itself a Kronecker preconditioner: set use_preconditioner=false"),
    ({"optimizer": "kfac", "use_preconditioner": False, "sam_mode": "base_sam"}, "runs without sam_mode"),
])
def test_kronecker_optimizer_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve("digits-mlp", overrides)


def test_study_keys_reach_only_the_cells_that_read_them():
    sgd = resolve("digits-mlp", {"use_preconditioner": False}).to_dict()
    params = json.loads(Cell("c", "digits-mlp", 42, sgd).config_json)
    assert not {"singd_structure", "factor_update_every", "kfac_ema", "precision"} & params.keys()
    singd = resolve("digits-mlp", {"use_preconditioner": False, "optimizer": "singd", "precision": "bf16"}).to_dict()
    params = json.loads(Cell("c", "digits-mlp", 42, singd).config_json)
    assert params["singd_structure"] == "dense" and params["precision"] == "bf16" and "kfac_ema" not in params


def _final(tmp_path, root, cell, **overrides):
    cfg = resolve("digits-mlp-smoke", {"use_preconditioner": False, **overrides})
    summary = run(cfg, cell_id=cell, results_dir=tmp_path / "r", checkpoints_dir=tmp_path / "c", data_root=root,
                  out=lambda _line: None)
    events = [json.loads(x) for x in (tmp_path / "r" / "cells" / cell / "metrics.jsonl").read_text().splitlines()]
    return summary, events


def test_svag_runs_l_times_the_steps_and_sde2_runs(tmp_path, digits_root):
    base, _ = _final(tmp_path, digits_root, "n/sgd/seed42")
    for variant in ("sde1", "sde2"):
        summary, events = _final(tmp_path, digits_root, f"n/{variant}/seed42", noise="svag", svag_l=4,
                                 svag_variant=variant)
        assert summary["status"] == "ok" and summary["total_steps"] - 1 == 4 * (base["total_steps"] - 1)
        losses = [e["train_loss"] for e in events if e["event"] == "train"]
        assert losses[-1] < losses[0]
        evals = [e for e in events if e["event"] in ("eval", "final_eval")]
        assert evals and all(e["effective_step"] == e["step"] / 4 for e in evals)
    from llqr.report.collect import read_curve

    curve = read_curve(tmp_path / "r", "n/sde1/seed42", "test_accuracy", x="effective_step")
    assert curve["step"].max() == (base["total_steps"] - 1)  # the same time axis as SGD's steps


def test_svag_at_l_1_is_the_plain_sgd_cell():
    from llqr.workflow.cells import normalise

    base = resolve("digits-mlp", {}).to_dict()
    svag1 = resolve("digits-mlp", {"noise": "svag", "svag_l": 1}).to_dict()
    assert normalise(svag1, base) == normalise(base, base)


def test_noisy_gradient_descent_and_noise_statistics(tmp_path, digits_root):
    summary, events = _final(tmp_path, digits_root, "n/ngd/seed42", noise="noisy_gd", noisy_gd_examples=256,
                             noise_stats_from_epoch=0.5, noise_stats_batches=4)
    assert summary["status"] == "ok" and summary["final_metrics"]["test_accuracy"] > 30
    stats = [e for e in events if "noise_ratio" in e]
    assert stats and all(e["noise_N"] > 0 for e in stats)
    assert "noise_ratio" in summary["final_metrics"]


@pytest.mark.parametrize("overrides,message", [
    ({"noise": "svag", "optimizer": "adamw"}, "noise=svag is a study of plain SGD"),
    ({"noise": "noisy_gd", "grad_acc_steps": 2}, "needs grad_acc_steps=1"),
])
def test_noise_study_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve("digits-mlp", overrides)


SVAG_DEMOS = ["demo_svag", "demo_svag_convergence_b64", "demo_svag_convergence_b1024", "demo_svag_baselines",
              "demo_svag_architectures", "demo_svag_unnormalized", "demo_svag_triangle", "demo_svag_cosine",
              "demo_lsr", "demo_lsr_further", "demo_lsr_noise", "demo_noisy_gd", "demo_noisy_gd_wide",
              "demo_noisy_gd_small_batch"]


# One surface of each kind and metric the study surfaces use (grid on effective steps, sweep on one and
# on three metrics, step accuracy, peak memory); every SVAG-study demo surface in the slow test below.
STUDY_KINDS = ["demo_singd_memory", "demo_svag_convergence_b64", "demo_lsr", "demo_lsr_noise", "demo_noisy_gd"]


@pytest.mark.workflow
def test_study_surfaces_render_from_a_shrunken_run(tmp_path):
    """The demo's study surfaces of every kind, shrunk (one preset, fewer variants, a few steps),
    through Snakemake."""
    _render_shrunken(tmp_path, STUDY_KINDS)


@pytest.mark.workflow
@pytest.mark.slow
def test_every_svag_study_surface_renders_from_a_shrunken_run(tmp_path):
    _render_shrunken(tmp_path, ["demo_singd_memory", *SVAG_DEMOS])


def _render_shrunken(tmp_path, study):
    import copy
    import csv

    import yaml

    from conftest import REPO, run_snakemake, write_yaml

    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["surfaces"]
    keep = {"optimizer": ["singd-diagonal"], "batch": ["32", "512"], "l": ["2"], "precision": ["fp32"]}
    shrink = {"max_steps": 6, "test_eval_freq": 3, "logging_freq": 3, "report_freq": 100, "mlp_hidden": [16]}
    surfaces = {name: None for name in base}
    for name in study:
        spec = copy.deepcopy(base[name])
        spec["seeds"], spec["presets"] = [42], spec["presets"][:1]
        for axis, labels in keep.items():
            if axis in spec["axes"]:
                spec["axes"][axis] = [v for v in spec["axes"][axis] if v["label"] in labels]
        extra = {"noise_stats_from_epoch": 0.0, "noise_stats_to_epoch": None, "noise_stats_every": None,
                 "noise_stats_batches": 2, "noise_stats_examples": None} if "lsr" in name else {}
        spec["rules"] = spec.get("rules", []) + [{"when": {}, "set": {**shrink, **extra}}]
        surfaces[name] = spec
    config = write_yaml(tmp_path / "studies.yaml", {"surfaces": surfaces})
    work = tmp_path / "work"
    work.mkdir()
    run_snakemake(["--cores", "2", "demo_extra", "--configfile", str(config)], work)  # the studies' demo group
    for name in study:
        out = work / "results" / "surfaces" / name
        rows = list(csv.DictReader((out / "table.csv").open()))
        assert (out / "figure.png").stat().st_size > 0 and rows, name
        assert all(r["status"] == "ok" and float(r["final_mean"]) > 0 for r in rows), (name, rows)
    noise = list(csv.DictReader((work / "results" / "surfaces" / "demo_lsr_noise" / "table.csv").open()))
    assert {r["metric"] for r in noise} == {"noise_ratio"} and len(noise) == 2


def test_noisy_gd_subset_larger_than_the_data_is_refused_before_training(tmp_path, digits_root):
    cfg = resolve("digits-mlp-smoke", {"use_preconditioner": False, "noise": "noisy_gd", "noisy_gd_examples": 5000})
    with pytest.raises(ConfigError, match="noisy_gd_examples=5000 exceeds the 1438 training examples"):
        run(cfg, cell_id="n/big/seed42", results_dir=tmp_path / "r", checkpoints_dir=tmp_path / "c",
            data_root=digits_root, out=lambda _line: None)
    assert not list(tmp_path.rglob("summary.json"))


@pytest.mark.slow
def test_an_unstable_bf16_kfac_inverse_ends_the_run_as_diverged(tmp_path, digits_root):
    """Undamped factors of the digits inputs are singular (constant pixels): bf16 Gauss-Jordan meets
    a zero pivot, the inverse turns inf/NaN and the loop's deferred NaN check records diverged."""
    cfg = resolve("digits-mlp-smoke", {"use_preconditioner": False, "optimizer": "kfac", "precision": "bf16",
                                       "factor_damping": 0.0, "factor_update_every": 1, "max_steps": 4})
    summary = run(cfg, cell_id="k/nan/seed42", results_dir=tmp_path / "r", checkpoints_dir=tmp_path / "c",
                  data_root=digits_root, out=lambda _line: None)
    assert summary["status"] == "diverged" and summary["diverged_at_step"] is not None, summary


def test_peak_memory_is_recorded_and_grows_with_the_batch_size(tmp_path, digits_root):
    finals = {}
    for batch in (8, 256):
        cfg = resolve("digits-mlp-smoke", {"use_preconditioner": False, "optimizer": "kfac", "max_steps": 2,
                                           "batch_size": batch})
        finals[batch] = run(cfg, cell_id=f"k/b{batch}/seed42", results_dir=tmp_path / "r",
                            checkpoints_dir=tmp_path / "c", data_root=digits_root,
                            out=lambda _line: None)["final_metrics"]
    for final in finals.values():
        assert final["peak_memory_source"] in ("compiled", "device") and final["step_memory_bytes"] > 0
        assert final["peak_memory_bytes"] >= final["opt_state_bytes"]
    assert finals[256]["step_memory_bytes"] > finals[8]["step_memory_bytes"] + 248 * 64 * 4  # the batch's inputs
