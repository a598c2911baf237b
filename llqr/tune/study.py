"""One Optuna study (TPE, or random search with ``sampler: random``): train the study's config with
sampled overrides, keep the best in best.json.

Resumable by construction. Trials live in an SQLite file beside best.json; a study killed
mid-way is continued, not restarted: finished trials count, and the trial that was running
when the process died is re-run with the same parameters (its checkpoints resume it). The
sampler is re-seeded from ``seed + finished trials`` before every draw, so an interrupted and
resumed study proposes exactly what an uninterrupted one would.

The Optuna study name is a hash of the study spec (base config, space, budget, objective):
editing the space starts a fresh study in the same file instead of mixing incompatible trials.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from ..atomic import write_atomic
from ..config import apply_overrides, build_config
from .space import suggest

DIVERGED = "diverged"
INTERRUPTED = "interrupted"


def spec_hash(spec: dict) -> str:
    """The Optuna study name; a non-default sampler is part of it, tpe leaves the TPE studies' names as they were."""
    keys = ("config", "space", "trials", "seed", "metric", "mode")
    fields = {k: spec[k] for k in keys}
    if spec.get("sampler", "tpe") != "tpe":
        fields["sampler"] = spec["sampler"]
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def make_sampler(name: str, seed: int):
    """A fresh Optuna sampler seeded with ``seed``: tpe (TPESampler) or random (RandomSampler)."""
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}")


def _final_metric(results_dir: Path, cell: str, metric: str):
    """The metric of the run's final evaluation (None if the run never got there)."""
    from ..report.collect import read_curve

    curve = read_curve(results_dir, cell, metric)
    final = curve[curve["event"] == "final_eval"]
    return float(final["value"].iloc[-1]) if not final.empty else None


def _trial_key(overrides: dict) -> str:
    return hashlib.sha256(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:10]


def _counted(trial) -> bool:
    """Trials that use up the budget: completed ones and those whose training diverged."""
    from optuna.trial import TrialState

    return trial.state == TrialState.COMPLETE or (
        trial.state == TrialState.FAIL and trial.user_attrs.get("outcome") == DIVERGED)


def _requeue_interrupted(study, out) -> None:
    """A RUNNING trial at start-up belongs to a process that died: fail it, queue its parameters again."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(trial._trial_id, "outcome", INTERRUPTED)
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, skip_if_exists=True)
        out(f"trial {trial.number} was interrupted; its parameters {trial.params} run again")


def run_study(spec: dict, study_dir, *, checkpoints_dir, data_root, out=print, train=None) -> dict:
    """Run the study ``spec`` (llqr.workflow.matrix.Study.to_dict()) to its trial budget; write and return best.json.

    ``train(cfg, cell_id, results_dir, checkpoints_dir, data_root)`` runs one trial (default: the
    training loop); it is a parameter so tests can interrupt a study at a chosen trial.
    """
    import optuna

    from ..train.loop import run

    train = train or (lambda cfg, **kw: run(cfg, out=lambda line: None, **kw))
    study_dir = Path(study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{(study_dir / 'optuna.db').resolve()}"
    name = spec_hash(spec)
    direction = "minimize" if spec["mode"] == "min" else "maximize"
    study = optuna.create_study(study_name=name, storage=storage, direction=direction, load_if_exists=True)
    _requeue_interrupted(study, out)
    n = spec["trials"]
    while True:
        done = [t for t in study.get_trials(deepcopy=False) if _counted(t)]
        if len(done) >= n:
            break
        study.sampler = make_sampler(spec.get("sampler", "tpe"), spec["seed"] + len(done))
        trial = study.ask()
        overrides = suggest(trial, spec["space"])
        cfg = build_config(apply_overrides(spec["config"], overrides))
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in overrides.items())
        out(f"[{spec['id']}] trial {len(done) + 1}/{n} (#{trial.number}): {shown}")
        cell = f"trial-{_trial_key(overrides)}"
        summary = train(cfg, cell_id=cell, results_dir=study_dir / name, checkpoints_dir=checkpoints_dir,
                        data_root=data_root)
        value = _final_metric(study_dir / name, cell, spec["metric"])
        status = summary.get("status")
        if status == "ok" and value is not None and math.isfinite(value):
            study.tell(trial, value)
            out(f"[{spec['id']}]   {spec['metric']} = {value:.5g}")
        elif status == DIVERGED:
            trial.set_user_attr("outcome", DIVERGED)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            out(f"[{spec['id']}]   diverged at step {summary.get('diverged_at_step')}; counted, not a candidate")
        else:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise RuntimeError(f"trial #{trial.number} ended with status {status!r}: {summary.get('message')}")
    return write_best(study, spec, study_dir / "best.json", out)


def write_best(study, spec: dict, path: Path, out=print) -> dict:
    from optuna.trial import TrialState

    trials = [t for t in study.get_trials(deepcopy=False) if _counted(t)]
    rows = [{"number": t.number, "params": t.params, "value": t.value,
             "outcome": "complete" if t.state == TrialState.COMPLETE else t.user_attrs.get("outcome")}
            for t in sorted(trials, key=lambda t: t.number)]
    complete = [r for r in rows if r["outcome"] == "complete"]
    if not complete:
        raise RuntimeError(f"study {spec['id']}: all {len(rows)} trials diverged; widen or move the search space")
    sign = 1.0 if spec["mode"] == "min" else -1.0
    best = min(complete, key=lambda r: (sign * r["value"], r["number"]))  # ties: the earliest trial
    record = {"study": spec["id"], "optuna_study": study.study_name, "metric": spec["metric"], "mode": spec["mode"],
              "trials_requested": spec["trials"], "sampler_seed": spec["seed"], "params": best["params"],
              "value": best["value"], "best_trial": best["number"], "trials": rows}
    if spec.get("sampler", "tpe") != "tpe":
        record["sampler"] = spec["sampler"]
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n"))
    out(f"[{spec['id']}] best of {len(rows)} trials: #{best['number']} {spec['metric']}={best['value']:.5g} "
        f"{best['params']}")
    return record
