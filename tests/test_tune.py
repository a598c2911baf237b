"""Optuna studies as workflow steps: search spaces, resume after a kill, best.json, LR-free optimizers,
and the study's consistency measures (power-law fit, SLCD)."""

import json
import math

import numpy as np
import pytest

from llqr.config import ConfigError, build_config, load_preset
from llqr.report.budget_stats import power_law_fit, slcd, slcd_matrix, smooth, upper_mean
from llqr.tune.space import check_space
from llqr.tune.study import run_study, spec_hash
from llqr.workflow.matrix import expand

SPACE = {"learning_rate": {"low": 1e-4, "high": 1e-1, "log": True}, "lr_scheduler.upper_bound": {"choices": [25, 30]}}


def _spec(trials=4, sampler=None, **overrides):
    config = build_config({**load_preset("digits-mlp-budget"), "preset": "digits-mlp-budget", "total_epochs": 5,
                           "lr_scheduler": {"name": "hyperbolic", "upper_bound": 25}, **overrides}).to_dict()
    return {"id": "digits-mlp-budget/test", "preset": "digits-mlp-budget", "config": config,
            "space": check_space(SPACE, "test"), "trials": trials, "seed": 42, "metric": "test_loss", "mode": "min",
            **({"sampler": sampler} if sampler else {})}


class FakeTrainer:
    """Stands in for the training loop: a deterministic loss of the sampled lr (minimum at 1e-2),
    written where the loop writes it. ``die_at`` raises mid-trial, as a killed job would stop."""

    def __init__(self, die_at=None):
        self.calls, self.configs, self.die_at = [], [], die_at

    def __call__(self, cfg, *, cell_id, results_dir, checkpoints_dir, data_root):
        self.calls.append(cfg.learning_rate)
        self.configs.append(cfg)
        if self.die_at is not None and len(self.calls) == self.die_at:
            raise KeyboardInterrupt("killed")
        if cfg.learning_rate > 0.09:
            return {"status": "diverged", "diverged_at_step": 3}
        cell = results_dir / "cells" / cell_id
        cell.mkdir(parents=True, exist_ok=True)
        loss = (math.log10(cfg.learning_rate) + 2.0) ** 2 + cfg.lr_scheduler["upper_bound"] / 1000
        (cell / "metrics.jsonl").write_text(json.dumps({"event": "final_eval", "step": 9, "test_loss": loss}) + "\n")
        return {"status": "ok"}


def test_study_writes_best_json_with_every_trial(tmp_path):
    best = run_study(_spec(), tmp_path, checkpoints_dir=tmp_path / "ck", data_root=tmp_path, out=lambda s: None,
                     train=FakeTrainer())
    on_disk = json.loads((tmp_path / "best.json").read_text())
    assert on_disk == best and len(best["trials"]) == 4
    values = [t["value"] for t in best["trials"] if t["outcome"] == "complete"]
    assert best["value"] == min(values) and set(best["params"]) == set(SPACE)
    assert (tmp_path / "optuna.db").is_file()


def _kill_and_resume(tmp_path, spec) -> tuple[dict, dict, FakeTrainer]:
    """(uninterrupted study, the same study killed in its third trial and resumed, the resuming trainer)."""
    whole = run_study(spec, tmp_path / "a", checkpoints_dir=tmp_path / "ck", data_root=tmp_path,
                      out=lambda s: None, train=FakeTrainer())
    with pytest.raises(KeyboardInterrupt):  # killed during the third trial: two finished
        run_study(spec, tmp_path / "b", checkpoints_dir=tmp_path / "ck", data_root=tmp_path,
                  out=lambda s: None, train=FakeTrainer(die_at=3))
    import optuna

    study = optuna.load_study(study_name=None, storage=f"sqlite:///{tmp_path / 'b' / 'optuna.db'}")
    states = [t.state.name for t in study.get_trials()]
    assert states.count("COMPLETE") + states.count("FAIL") == 2 and states.count("RUNNING") == 1
    log, resumed_trainer = [], FakeTrainer()
    resumed = run_study(spec, tmp_path / "b", checkpoints_dir=tmp_path / "ck", data_root=tmp_path,
                        out=log.append, train=resumed_trainer)
    assert len(resumed_trainer.calls) == 2  # only the interrupted trial and the missing one run
    assert any("interrupted" in line for line in log)
    assert resumed["params"] == whole["params"] and resumed["value"] == whole["value"]
    assert [t["params"] for t in resumed["trials"]] == [t["params"] for t in whole["trials"]]
    return whole, resumed, resumed_trainer


@pytest.mark.parametrize("sampler", [None, "random"])
def test_killed_study_resumes_with_its_finished_trials_and_matches_an_uninterrupted_one(tmp_path, sampler):
    _, resumed, _ = _kill_and_resume(tmp_path, _spec(sampler=sampler))
    assert resumed.get("sampler") == sampler  # recorded only when not the default tpe


@pytest.mark.slow  # 4.4 s: three Optuna SQLite studies
def test_a_killed_adam_study_resumes_like_an_adamw_one(tmp_path):
    """The HyperbolicLR study's Adam positions (optimizer adam, no weight decay: its budget axis) resume
    as its AdamW ones; the trials see the Adam config, and the study is not the AdamW one."""
    adam = _spec(optimizer="adam", weight_decay=0.0)
    assert spec_hash(adam) != spec_hash(_spec())
    _, _, trainer = _kill_and_resume(tmp_path, adam)
    assert trainer.configs and all((c.optimizer, c.weight_decay) == ("adam", 0.0) for c in trainer.configs)


def test_the_sampler_is_part_of_a_study_only_when_it_is_not_tpe():
    tpe, rnd = _spec(), _spec(sampler="random")
    assert spec_hash(tpe) == spec_hash({**tpe, "sampler": "tpe"}) != spec_hash(rnd)
    config = _tuned_config({})
    default = sorted(s.spec_json for s in expand(config).studies.values())
    assert all('"sampler"' not in j for j in default)
    for surface in config["surfaces"].values():
        surface["tune"] = {**surface["tune"], "sampler": "random"}
    studies = expand(config).studies.values()
    assert all(s.sampler == "random" and s.to_dict()["sampler"] == "random" for s in studies)
    assert sorted(json.dumps({k: v for k, v in json.loads(s.spec_json).items() if k != "sampler"}, sort_keys=True,
                             separators=(",", ":")) for s in studies) == default
    config["surfaces"]["b"]["tune"]["sampler"] = "grid"
    with pytest.raises(ConfigError, match="unknown tune.sampler 'grid'"):
        expand(config)


def test_a_finished_study_runs_no_more_trials(tmp_path):
    run_study(_spec(3), tmp_path, checkpoints_dir=tmp_path / "ck", data_root=tmp_path, out=lambda s: None,
              train=FakeTrainer())
    again = FakeTrainer()
    run_study(_spec(3), tmp_path, checkpoints_dir=tmp_path / "ck", data_root=tmp_path, out=lambda s: None, train=again)
    assert again.calls == []


def test_a_changed_space_is_a_fresh_study_in_the_same_storage(tmp_path):
    run_study(_spec(2), tmp_path, checkpoints_dir=tmp_path / "ck", data_root=tmp_path, out=lambda s: None,
              train=FakeTrainer())
    spec = _spec(2)
    spec["space"] = check_space({"learning_rate": {"low": 1e-3, "high": 1e-2, "log": True}}, "test")
    trainer = FakeTrainer()
    best = run_study(spec, tmp_path, checkpoints_dir=tmp_path / "ck", data_root=tmp_path, out=lambda s: None,
                     train=trainer)
    assert len(trainer.calls) == 2 and set(best["params"]) == {"learning_rate"}
    assert all(1e-3 <= lr <= 1e-2 for lr in trainer.calls)


def test_diverged_trials_count_but_never_win(tmp_path):
    spec = _spec(3)
    spec["space"] = check_space({"learning_rate": {"low": 0.05, "high": 0.2}}, "test")
    best = run_study(spec, tmp_path, checkpoints_dir=tmp_path / "ck", data_root=tmp_path, out=lambda s: None,
                     train=FakeTrainer())
    outcomes = [t["outcome"] for t in best["trials"]]
    assert len(outcomes) == 3 and "diverged" in outcomes and best["params"]["learning_rate"] <= 0.09


@pytest.mark.parametrize("space,message", [
    ({"learning_rate": {"low": 1.0, "high": 0.1}}, "need numbers low < high"),
    ({"learning_rate": {"low": 0.0, "high": 0.1, "log": True}}, "log range needs low > 0"),
    ({"learning_rate": {"choices": []}}, "non-empty list"),
    ({"learning_rate": {"low": 0.1, "high": 1.0, "step": 2}}, "expected {low, high"),
    ({"learning_rate": 0.1}, "must be a mapping"),
])
def test_bad_search_spaces_are_refused(space, message):
    with pytest.raises(ConfigError, match=message):
        check_space(space, "here")


def _tuned_config(space, budgets=("5", "10")):
    axes = {"schedule": [{"label": "H", "set": {"lr_scheduler": {"name": "hyperbolic", "upper_bound": 25}}},
                         {"label": "C", "set": {"lr_scheduler": "cosine"}}],
            "budget": [{"label": b, "set": {"total_epochs": int(b)}} for b in budgets]}
    tune = {"budget_axis": "budget", "trials": 2, "space": {"learning_rate": {"low": 1e-3, "high": 1e-1, "log": True}},
            "rules": [{"when": {"schedule": "H"}, "space": space}]}
    return {"surfaces": {"b": {"presets": ["digits-mlp-budget"], "seeds": [1, 2], "axes": axes, "kind": "budget",
                               "budget_axis": "budget", "tune": tune},
                         "s": {"presets": ["digits-mlp-budget"], "seeds": [1], "axes": axes, "kind": "slcd",
                               "budget_axis": "budget", "tune": tune}}}


def test_matrix_derives_one_study_per_position_shared_across_budgets_seeds_and_surfaces():
    m = expand(_tuned_config({"lr_scheduler.upper_bound": {"choices": [25, 30]}}))
    assert len(m.studies) == 2
    h = m.studies["digits-mlp-budget/epochs=5.0__lr_sched=hyperbolic:upper_bound=25.0"]
    assert h.config["total_epochs"] == 5 and h.config["init_key"] == 1 and set(h.space) == {
        "learning_rate", "lr_scheduler.upper_bound"}
    tuned = [c for c in m.cells.values() if c.study == h.id]
    assert len(tuned) == 4 and all(c.id.split("/")[1].endswith("+tuned") for c in tuned)  # 2 budgets x 2 seeds
    assert {c.config["total_epochs"] for c in tuned} == {5, 10}


def test_a_space_that_cannot_fit_a_budget_fails_at_parse_time():
    with pytest.raises(ConfigError, match=r"budget=24\]: lr_scheduler.upper_bound=20 must be >= total_epochs=24"):
        expand(_tuned_config({"lr_scheduler.upper_bound": {"choices": [20, 40]}}, budgets=("5", "24")))


def test_two_surfaces_disagreeing_on_a_study_is_an_error():
    config = _tuned_config({"lr_scheduler.upper_bound": {"choices": [25, 30]}})
    config["surfaces"]["s"]["tune"] = {**config["surfaces"]["s"]["tune"], "trials": 5}
    with pytest.raises(ConfigError, match="defined twice"):
        expand(config)


def test_budget_axis_labels_must_be_numbers():
    config = _tuned_config({})
    config["surfaces"]["b"]["axes"]["budget"][0]["label"] = "short"
    with pytest.raises(ConfigError, match="not a number"):
        expand(config)


# --- LR-free optimizers ----------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["prodigy", "dadapt_adamw"])
def test_lr_free_optimizers_train_the_digits_mlp(optimizer, tmp_path, digits_root):
    from llqr.train.loop import run

    cfg = build_config({**load_preset("digits-mlp-smoke"), "preset": "digits-mlp-smoke", "optimizer": optimizer,
                        "learning_rate": 1.0, "total_epochs": 4, "logging_freq": 1})
    run(cfg, cell_id="lrfree/x/seed42", results_dir=tmp_path, checkpoints_dir=tmp_path / "ck", data_root=digits_root,
        out=lambda s: None)
    events = [json.loads(line) for line in (tmp_path / "cells/lrfree/x/seed42/metrics.jsonl").read_text().splitlines()]
    losses = [e["train_loss"] for e in events if e["event"] == "train"]
    assert math.isfinite(losses[-1]) and losses[-1] < 0.5 * losses[0]


# --- the consistency measures ----------------------------------------------------------------------


def test_power_law_fit_recovers_an_exact_law_and_scores_noise_lower():
    n = np.array([50, 100, 150, 200])
    exact = power_law_fit(n, 3.0 * n**-0.4)
    assert exact["a"] == pytest.approx(3.0) and exact["b"] == pytest.approx(-0.4) and exact["r2"] == pytest.approx(1.0)
    noisy = power_law_fit(n, 3.0 * n**-0.4 * np.array([1.0, 1.3, 0.8, 1.1]))
    assert noisy["r2"] < 0.9
    assert math.isnan(power_law_fit([50], [1.0])["b"]) and power_law_fit([5, 10, 20], [1, np.nan, 0.5])["n"] == 2


def test_slcd_is_zero_for_one_curve_and_grows_with_the_gap():
    steps = np.arange(30)
    curve = 2.0 * np.exp(-steps / 8) + 0.1
    assert slcd(steps, curve, steps, curve) == pytest.approx(0.0, abs=1e-12)
    near = slcd(steps[:15], curve[:15], steps, curve * 1.05)
    far = slcd(steps[:15], curve[:15], steps, curve * 1.5)
    # |x - 1.5x| / (x + 1.5x) = 0.2, up to the two curves' different smoothing edges
    assert 0 < near < far and far == pytest.approx(0.5 / 2.5, rel=0.02)
    mat = slcd_matrix([(steps[:10], curve[:10]), (steps, curve * 1.05), None])
    assert mat[0, 0] == 0 and mat[0, 1] == mat[1, 0] > 0 and np.isnan(mat[0, 2])
    assert upper_mean(mat) == pytest.approx(mat[0, 1])


def test_smoothing_uses_the_window_the_curve_can_hold():
    x = np.arange(6, dtype=float) ** 2  # a parabola: order-2 Savitzky-Golay reproduces it exactly
    np.testing.assert_allclose(smooth(x), x, atol=1e-9)
    assert np.array_equal(smooth([1.0, 5.0]), [1.0, 5.0])
    noisy = np.sin(np.linspace(0, 3, 40)) + 0.1 * np.random.default_rng(0).standard_normal(40)
    assert np.std(np.diff(smooth(noisy))) < np.std(np.diff(noisy))
