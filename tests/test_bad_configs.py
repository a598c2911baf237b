"""Every refusal before a job is queued: a table of bad workflow configs, each run through both
``snakemake -n`` and ``python -m llqr.plan`` (one validator, llqr/validator.py), must fail and name
the offending key; and no config value reaches a shell or a path outside the storage folders.

The 2 x CASES subprocesses run concurrently in one module fixture (about 3 s of CPU per snakemake
start). The SLURM executor plugin probes ``scontrol show config`` at start-up whenever SLURM's tools
are on PATH, which takes 10 s on a machine without a controller; these dry runs need no SLURM, so
their PATH holds only the venv and ``which``/``sh``/``bash``.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from conftest import REPO, run_snakemake, slurm_free_env
from llqr.config import ConfigError
from llqr.workflow.matrix import load_workflow_config

DEMO = load_workflow_config(REPO / "config/config.yaml")
OFF = {name: None for name in DEMO["surfaces"]}  # the demo's surfaces switched off: fast to expand


def surface(set_=None, **spec) -> dict:
    """A small surface on digits-mlp with one variant setting ``set_``; ``spec`` overrides its keys."""
    out = {"presets": ["digits-mlp"], "seeds": [42], "axes": {"method": [{"label": "a", "set": set_ or {}}]}}
    out.update(spec)
    return out


def config(name="bad", spec=None, **top) -> dict:
    """A workflow config (to be merged on config/config.yaml) with only surface ``name``."""
    return {**top, "surfaces": {**OFF, name: surface() if spec is None else spec}}


def tuned(space: dict) -> dict:
    """A surface with a tuning study of ``space`` (LLQR on, so the divergence is read)."""
    return surface(axes={"budget": [{"label": "5", "set": {"total_epochs": 5, "use_preconditioner": True}}]},
                   tune={"budget_axis": "budget", "trials": 2, "space": space})


LLQR = {"use_preconditioner": True}
# (id, the workflow config, text the error must hold: the offending key)
CASES = [
    ("unknown key", config(spec=surface({"learning_rat": 0.1})), "learning_rat"),
    ("unknown group", config(spec=surface(group="study")), "unknown group 'study'"),
    ("wrong type", config(spec=surface({"batch_size": "big"})), "batch_size"),
    ("out of range", config(spec=surface({"ema_decay": 1.5})), "ema_decay"),
    ("bad choice", config(spec=surface({"optimizer": "adamw2"})), "optimizer"),
    ("research-only divergence", config(spec=surface({**LLQR, "divergence": "renyi_zero"})), "divergence=renyi_zero"),
    ("renyi at order 1", config(spec=surface({**LLQR, "divergence": "renyi", "divergence_order_param": 1})),
     "divergence_order_param"),
    ("sam_research_perturb_sign", config(spec=surface({**LLQR, "sam_mode": "base_sam",
                                                       "sam_research_perturb_sign": "descent"})),
     "sam_research_perturb_sign"),
    ("precond_on_update", config(spec=surface({**LLQR, "precond_on_update": True})), "precond_on_update"),
    ("model too deep for mnist", config(spec=surface({"model": "wide_resnet28x10", "dataset": "mnist"})),
     "dataset=mnist"),
    ("translation model on images", config(spec=surface({"model": "transformer_iwslt"})), "model transformer_iwslt"),
    ("vgg16bn dropout", config(spec=surface({"model": "vgg16bn", "dataset": "cifar10", "dropout_rate": 0.1})),
     "dropout_rate"),
    ("exact P on a large model", config(spec=surface({**LLQR, "block_structure": "exact"})), "block_structure=exact"),
    ("chunked fit of renyi", config(spec=surface({**LLQR, "divergence": "renyi", "precond_batch_size": 64,
                                                  "llqr_batch_update_mode": "chunked_lqr_segment",
                                                  "llqr_batch_update_chunk_size": 16})),
     "llqr_batch_update_chunk_size"),
    ("noisy_gd subset above the split", config(spec=surface({"noise": "noisy_gd", "noisy_gd_examples": 5000})),
     "noisy_gd_examples"),
    ("bad schedule dict", config(spec=surface({"lr_scheduler": {"name": "cosine_annealing", "tmax": 3}})),
     "lr_scheduler.tmax"),
    ("bad seeds", config(spec=surface(seeds=[-1])), "seeds"),
    ("bad axis", config(spec=surface(axes={"seed": [{"label": "x", "set": {}}]})), "axis name 'seed'"),
    ("unknown preset", config(spec=surface(presets=["digits-mlpp"])), "unknown preset 'digits-mlpp'"),
    ("bad resources", config(resources={"default": {"gpu": -1}}), "resources/default/gpu"),
    ("data_parallel over 3 GPUs", config(spec=surface({"data_parallel": True}),
                                         resources={"presets": {"digits-mlp": {"gpu": 3}}}), "batch_size"),
    ("tuning space with a research-only choice",
     config(spec=tuned({"divergence": {"choices": ["ngd", "renyi_inf", "newton"]}})), "divergence=renyi_inf"),
    ("'..' surface name", config(name=".."), "surface name"),
    ("';' in a surface name", config(name="bad;touch x"), "surface name"),
    ("$(...) in a surface name", config(name="$(touch x)"), "surface name"),
    ("newline in a surface name", config(name="bad\nname"), "surface name"),
    ("backtick preset", config(spec=surface(presets=["digits-mlp`id`"])), "preset"),
    ("'|' and quotes in a label", config(spec=surface(axes={"method": [{"label": "a|b'c", "set": {}}]})),
     "label of axis 'method'"),
    ("'..' dataset_dir", config(spec=surface({"dataset_dir": "../../etc"})), "dataset_dir"),
    ("newline in results_dir", config(results_dir="results\nx"), "results_dir"),
    ("backticks in checkpoints_dir", config(checkpoints_dir="ck`id`"), "checkpoints_dir"),
    ("';' in data_dir", config(data_dir="data;rm -rf x"), "data_dir"),
    ("slurm_extra with ';'", config(resources={"default": {"slurm_extra": "--qos=high; touch x"}}), "slurm_extra"),
    ("'..' data source file", config(data_sources={"mnist": {"file": "../../mnist.npz"}}), "data_sources.mnist.file"),
]


def _snakemake_argv(path: Path) -> list[str]:
    """``snakemake -n`` on the config, in the config's own folder (its working directory)."""
    return ["--snakefile", str(REPO / "Snakefile"), "--directory", str(path.parent), "-n", "--cores", "1",
            "--configfile", str(path)]


def _plan_argv(path: Path) -> list[str]:
    return ["--summary", "--configfile", str(path)]


def _snakemake(path: Path, env: dict) -> subprocess.CompletedProcess:
    return run_snakemake(_snakemake_argv(path)[4:], path.parent, env=env, check=False, timeout=300)


def _plan(path: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llqr.plan", *_plan_argv(path)],
                          capture_output=True, text=True, env=env, cwd=path.parent, timeout=300, check=False)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """{(case, tool): CompletedProcess} for every case through snakemake -n and llqr.plan: the same
    entry points and argv as separate processes, forked from one process that imported them once
    (tests/forked_cli.py; test_a_forked_refusal_is_the_separate_process_refusal checks they agree)."""
    root = tmp_path_factory.mktemp("bad-configs")
    env = slurm_free_env(root)
    keys, jobs = [], []
    for i, (case, cfg, _key) in enumerate(CASES):
        path = root / f"case{i:02d}" / "bad.yaml"
        path.parent.mkdir()
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        for tool, argv in (("snakemake", _snakemake_argv(path)), ("plan", _plan_argv(path))):
            keys.append((case, tool))
            jobs.append({"tool": tool, "argv": argv, "cwd": str(path.parent),
                         "out": str(path.parent / f"{tool}.out"), "err": str(path.parent / f"{tool}.err")})
    (root / "jobs.json").write_text(json.dumps(jobs))
    start = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "tests" / "forked_cli.py"), str(root / "jobs.json"),
                    str(root / "codes.json"), "2"], env=env, check=True, timeout=600)
    codes = json.loads((root / "codes.json").read_text())
    print(f"\n{len(jobs)} refusals ({len(CASES)} configs x snakemake -n, llqr.plan) in "
          f"{time.perf_counter() - start:.1f} s")
    return {key: subprocess.CompletedProcess(job["argv"], code, Path(job["out"]).read_text(),
                                             Path(job["err"]).read_text())
            for key, job, code in zip(keys, jobs, codes, strict=True)}


def test_the_table_is_large_and_every_case_is_distinct():
    assert len(CASES) >= 30
    assert len({c for c, _, _ in CASES}) == len(CASES)
    assert len({yaml.safe_dump(cfg) for _, cfg, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("tool", ["snakemake", "plan"])
@pytest.mark.parametrize("case,key", [(c, k) for c, _, k in CASES], ids=[c for c, _, _ in CASES])
def test_bad_config_is_refused_naming_the_key(outcomes, case, key, tool):
    proc = outcomes[(case, tool)]
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert key in out, out[-3000:]
    if tool == "snakemake":
        assert "invalid workflow config" in out or "surfaces/" in out or "resources/" in out, out[-3000:]
        assert "Job stats" not in out and "rule train" not in out  # refused at parse time, no job planned
    else:
        assert out.startswith("error: ") and proc.returncode == 2, out[-3000:]


def test_the_valid_base_config_passes_both(tmp_path):
    """The control: the table's base config (no bad value) is accepted by both tools."""
    path = tmp_path / "good.yaml"
    path.write_text(yaml.safe_dump(config()))
    env = slurm_free_env(tmp_path)
    with ThreadPoolExecutor(2) as pool:
        sm, plan = pool.submit(_snakemake, path, env), pool.submit(_plan, path, env)
        sm, plan = sm.result(), plan.result()
    assert sm.returncode == 0, sm.stdout + sm.stderr
    assert plan.returncode == 0 and "bad (demo): 1 cells" in plan.stdout, plan.stdout + plan.stderr


def test_a_forked_refusal_is_the_separate_process_refusal(outcomes, tmp_path):
    """The fixture's forked invocations behave as separate processes: one case run both ways gives the
    same exit status and the same error text."""
    case, cfg, _key = CASES[0]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = slurm_free_env(tmp_path)
    with ThreadPoolExecutor(2) as pool:
        sm, plan = pool.submit(_snakemake, path, env), pool.submit(_plan, path, env)
        separate = {"snakemake": sm.result(), "plan": plan.result()}
    for tool, proc in separate.items():
        forked = outcomes[(case, tool)]
        assert proc.returncode == forked.returncode != 0, tool
        assert _error_lines(proc.stdout + proc.stderr) == _error_lines(forked.stdout + forked.stderr), tool


def _error_lines(text: str) -> list[str]:
    """The lines naming the error, with paths (the config's folder differs between the runs) elided."""
    lines = [ln for ln in text.splitlines() if "error" in ln.lower() or "invalid" in ln.lower()]
    return [re.sub(r"/[^\s'\"]+", "<path>", ln) for ln in lines]


# --- one validator, JAX-free, also behind the training CLI -----------------------------------------------------


def test_the_validator_imports_no_jax():
    code = ("import sys; import llqr.workflow.validator, llqr.config.validate, llqr.config.keydoc, llqr.workflow.plan; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'jax', 'jaxlib', 'flax', 'optax'}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                          check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


@pytest.mark.parametrize("values", [{"model": "mlp", "mlp_hidden": [32]}, {"model": "mlp", "dataset": "cifar100"},
                                    {"model": "si_mlp", "mlp_hidden": [16, 8]}, {"model": "mlp", "mlp_hidden": []}])
def test_the_parameter_count_of_the_exact_check_is_the_models(values):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from llqr.config import build_config
    from llqr.config.runnable import _CLASSES, _mlp_params
    from llqr.models import build_model

    cfg = build_config(values)
    shape = {"digits": (8, 8, 1), "cifar100": (32, 32, 3)}[cfg.dataset]
    model = build_model(cfg, num_classes=_CLASSES.get(cfg.dataset, 10))
    shapes = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, *shape)), train=False), jax.random.PRNGKey(0))
    assert _mlp_params(cfg.to_dict()) == sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes["params"]))


def test_models_refused_on_small_images_do_fail_there_and_the_others_build():
    """The model/dataset rule is the models' own limit: each deep model collapses an 8x8 image."""
    import jax
    import jax.numpy as jnp

    from llqr.config import build_config
    from llqr.config.runnable import LARGE_IMAGE_MODELS
    from llqr.models import build_model

    def init(model_name):
        model = build_model(build_config({"model": model_name}), num_classes=10)
        return jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 8, 8, 1)), train=False), jax.random.PRNGKey(0))

    for name in ("vgg16bn", "vgg16", "wide_resnet28x10"):  # pyramidnet110 and vgg19 alike, slower to trace
        assert name in LARGE_IMAGE_MODELS
        with pytest.raises(ZeroDivisionError):
            init(name)
    for name in ("mlp", "si_mlp", "simple_cnn", "simple_vit", "preresnet32"):
        init(name)


def test_the_training_cli_uses_the_validator(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "llqr.train", "preset=digits-mlp", "use_preconditioner=true",
                           "divergence=renyi_inf", "--print-config"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120, check=False)
    assert proc.returncode == 2 and "config error: divergence=renyi_inf is research-only" in proc.stderr, proc.stderr
    assert not any(tmp_path.iterdir())


def test_check_runnable_names_the_key_for_what_the_runner_refuses():
    from llqr.config import build_config
    from llqr.config.runnable import check_runnable

    for values, key in [({"use_preconditioner": True, "precond_on_update": True}, "precond_on_update"),
                        ({"use_preconditioner": True, "divergence": "renyi_zero"}, "divergence=renyi_zero"),
                        ({"sam_mode": "fisher_sam", "use_preconditioner": False,
                          "sam_research_perturb_sign": "descent"}, "sam_research_perturb_sign"),
                        ({"model": "preresnet32", "norm": "none"}, "norm="),
                        ({"model": "si_mlp", "mlp_hidden": []}, "mlp_hidden"),
                        ({"use_preconditioner": True, "block_structure": "exact", "model": "resnet18",
                          "dataset": "cifar10"}, "block_structure=exact")]:
        cfg = build_config(values)
        with pytest.raises(ConfigError, match=key):
            check_runnable(cfg)
        with pytest.raises(ConfigError, match=key):
            check_runnable(cfg.to_dict())
    check_runnable(build_config({"use_preconditioner": False, "divergence": "renyi_zero"}))  # never read: fine
    check_runnable(build_config({"model": "mlp", "mlp_hidden": [16], "use_preconditioner": True,
                                 "block_structure": "exact"}))  # 1,210 parameters
    with pytest.raises(ConfigError, match="batch_size=64 does not split evenly over the job's 3 GPUs"):
        check_runnable(build_config({"data_parallel": True, "batch_size": 64, "use_preconditioner": False}), devices=3)


# --- no config value reaches a shell or a path outside results, checkpoints and data ----------------------------

HOSTILE = [";", "$(id)", "`id`", "|", "'", '"', "\n", "&", ">", "\\"]


def _base() -> dict:
    return {**copy.deepcopy(DEMO), **config()}


def _where(cfg: dict, target: str, text: str) -> dict:
    """``cfg`` with ``text`` put where ``target`` says."""
    bad = cfg["surfaces"]["bad"]
    if target == "surface name":
        cfg["surfaces"][f"x{text}y"] = cfg["surfaces"].pop("bad")
    elif target == "preset":
        bad["presets"] = [f"digits-mlp{text}"]
    elif target == "axis name":
        bad["axes"] = {f"m{text}": bad["axes"]["method"]}
    elif target == "label":
        bad["axes"]["method"][0]["label"] = f"a{text}"
    elif target == "dataset_dir":
        bad["axes"]["method"][0]["set"]["dataset_dir"] = f"data{text}x"
    elif target in ("results_dir", "checkpoints_dir", "data_dir"):
        cfg[target] = f"out{text}x"
    elif target == "slurm_extra":
        cfg["resources"]["default"]["slurm_extra"] = f"--qos=a{text}b"
    elif target == "cluster.partition":
        cfg["cluster"]["partition"] = f"p{text}"
    elif target == "data_sources.mnist.file":
        cfg["data_sources"]["mnist"]["file"] = f"m{text}.npz"
    return cfg


TARGETS = ["surface name", "preset", "axis name", "label", "dataset_dir", "results_dir", "checkpoints_dir", "data_dir",
           "slurm_extra", "cluster.partition", "data_sources.mnist.file"]


@pytest.mark.parametrize("target", TARGETS)
def test_shell_metacharacters_are_refused_wherever_a_value_becomes_a_name_path_or_argument(target):
    from llqr.workflow.validator import check_workflow

    for text in HOSTILE:
        with pytest.raises(ConfigError, match=target.split(".")[-1] if target != "label" else "label of axis"):
            check_workflow(_where(_base(), target, text))


@pytest.mark.parametrize("target,value", [("surface name", ".."), ("preset", "../presets/digits-mlp"),
                                          ("label", ".."), ("dataset_dir", "../../etc"),
                                          ("data_sources.mnist.file", "../../x.npz")])
def test_dotdot_is_refused_wherever_a_value_becomes_a_path(target, value):
    from llqr.workflow.validator import check_workflow

    cfg = _base()
    if target == "surface name":
        cfg["surfaces"][".."] = cfg["surfaces"].pop("bad")
    elif target == "preset":
        cfg["surfaces"]["bad"]["presets"] = [value]
    elif target == "label":
        cfg["surfaces"]["bad"]["axes"]["method"][0]["label"] = value
    elif target == "dataset_dir":
        cfg["surfaces"]["bad"]["axes"]["method"][0]["set"]["dataset_dir"] = value
    else:
        cfg["data_sources"]["mnist"]["file"] = value
    with pytest.raises(ConfigError, match=target.split(".")[-1] if target != "label" else "label of axis"):
        check_workflow(cfg)


def test_cell_ids_quote_hostile_values_into_one_safe_path_component():
    """Values that produce cell ids (any string a variant sets) are percent-encoded: the id is three
    plain components, survives Snakemake's --target-jobs parsing and holds nothing a shell reads."""
    from snakemake.target_jobs import parse_target_jobs_cli_args

    from llqr.config.safety import SHELL_METACHARACTERS
    from llqr.workflow.validator import check_workflow

    hostile = ["a;b", "$(id)", "`id`", "x|y", "q'\"", "n\nl", "../../etc", "/abs", "s p", "c,d"]
    cfg = _base()
    cfg["surfaces"]["bad"]["axes"]["method"] = [{"label": f"v{i}", "set": {"wd_mask": [text]}}
                                                for i, text in enumerate(hostile)]
    matrix = check_workflow(cfg)
    assert len(matrix.cells) == len(hostile)
    for cid in matrix.cells:
        parts = cid.split("/")
        assert len(parts) == 3 and ".." not in parts and all(parts), cid
        assert not (set(cid) & SHELL_METACHARACTERS) and not any(c.isspace() or ord(c) < 32 for c in cid), cid
        (spec,) = parse_target_jobs_cli_args([f"train:cell={cid}"])
        assert spec.wildcards_dict == {"cell": cid}


def test_no_rule_builds_a_shell_command():
    """Rules run Python scripts (script:) with config values as params, never a shell: line where a
    value could be pasted into a command."""
    for path in [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]:
        for line in path.read_text().splitlines():
            assert not line.strip().startswith(("shell:", "run:")), f"{path.name}: {line}"
