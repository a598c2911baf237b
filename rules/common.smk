# Config validation, the cell matrix, and the input/resource functions the rules use.
import json
import os

from snakemake.exceptions import WorkflowError

from llqr.config import ConfigError
from llqr.workflow.jobparams import JobParams, config_flag, normalise_dir
from llqr.workflow.matrix import preset_base
from llqr.workflow.resources import DEFAULTS as RESOURCE_DEFAULTS, preset_resources as _preset_resources
from llqr.workflow.validator import check_workflow


# The one validator (llqr/validator.py): the schema (its defaults filled in), every string that can
# reach a path or a command line, every cell's run config and what its job would refuse; one line
# naming the offending key, before any job is queued.
try:
    MATRIX = check_workflow(config, fill_defaults=True)
except ConfigError as exc:
    raise WorkflowError(f"invalid workflow config: {exc}") from None

# One spelling per folder (./data, data/ and $PWD/data are all `data`), so respelling a path
# changes no declared input or output; the jobs get them through JobParams, never as a trigger.
RESULTS = normalise_dir(config["results_dir"])
CHECKPOINTS = normalise_dir(config["checkpoints_dir"])
DATA = normalise_dir(config["data_dir"])
ALLOW_MISSING = config_flag(config.get("allow_missing"), "allow_missing")  # "true" from --config counts
# Used only with --software-deployment-method conda; `llqr` itself comes from the repo checkout.
CONDA_ENV = f"../envs/{config.get('conda_env', 'cpu')}.yaml"


TRANSLATION_CORPORA = ("iwslt14_de_en", "synth_de_en")


wildcard_constraints:
    cell=r"[^/]+/[^/]+/seed\d+",
    surface=r"[^/]+",
    study=r"[^/]+/[^/]+",
    corpus="|".join(TRANSLATION_CORPORA),
    lang="de|en",


def surface_targets(group, required=False):
    names = MATRIX.group(group)
    if required and not names:
        raise WorkflowError(
            f"no '{group}' surfaces in the config; add --configfile config/paper.yaml"
        )
    return [f"{RESULTS}/surfaces/{name}/table.md" for name in names]


def cell_of(wildcards):
    try:
        return MATRIX.cells[wildcards.cell]
    except KeyError:
        raise WorkflowError(
            f"cell '{wildcards.cell}' is not in any surface of the config"
        ) from None


# --- data inputs of a cell ------------------------------------------------------------
def raw_archive(name):
    return f"{DATA}/{name}/raw/{config['data_sources'][name]['file']}"


def dataset_inputs(dataset):
    if dataset == "digits":
        return [f"{DATA}/digits/digits.npz"]
    if dataset in ("mnist", "cifar10", "cifar100"):
        return [raw_archive(dataset)]
    if dataset in TRANSLATION_CORPORA:  # prepared by rules/iwslt.smk
        return [f"{DATA}/{dataset}/iwslt14.tokenized.de-en.tar.gz", f"{DATA}/{dataset}/numeric/metadata.json"]
    if dataset == "imagenet":
        return [f"{DATA}/imagenet/shards/manifest.json"]
    return []


def config_inputs(run_config):
    if run_config["dataset_dir"]:  # the user points at prepared data themselves
        return []
    if run_config["dataset"] == "mod_sum":  # one file per modulus (rule prepare_modular)
        return [f"{DATA}/mod_sum/p{run_config.get('modulus', 97)}.npz"]
    return dataset_inputs(run_config["dataset"])


def train_inputs(wildcards):
    return config_inputs(cell_of(wildcards).config)


# --- tuning studies (rules/tune.smk) ---------------------------------------------------
def study_of(wildcards):
    try:
        return MATRIX.studies[wildcards.study]
    except KeyError:
        raise WorkflowError(
            f"study '{wildcards.study}' is not defined by any surface's 'tune' block"
        ) from None


def best_json(study_id):
    return f"{RESULTS}/tuning/{study_id}/best.json"


def tuned_input(wildcards):
    """A tuned cell waits for its study and re-runs when the study's best.json changes."""
    study = cell_of(wildcards).study
    return [best_json(study)] if study else []


def study_inputs(wildcards):
    return config_inputs(study_of(wildcards).config)


# --- resources (per preset; never part of a cell's identity) --------------------------
def preset_resources(preset):
    return _preset_resources(config, preset)


def _train_resource_keys():
    keys = {"mem_mb", "runtime", "cpus_per_task"}
    for cell in MATRIX.cells.values():
        keys.update(preset_resources(cell.preset))
    return sorted(keys)


def _resource_fn(key, owner=None):
    owner = owner or cell_of

    def fn(wildcards):
        res = preset_resources(owner(wildcards).preset)
        return res.get(key, RESOURCE_DEFAULTS.get(key, ""))

    return fn


TRAIN_RESOURCES = {key: _resource_fn(key) for key in _train_resource_keys()}
# A study runs its trials one after another in one job: the preset's resources, with the runtime
# (set for the preset's own epoch budget) scaled by trials x tuning budget / preset budget. A study
# longer than the partition allows resumes over the profile's retries (finished trials are kept).
TUNE_RESOURCES = {key: _resource_fn(key, study_of) for key in _train_resource_keys()}


def _tune_runtime(wildcards):
    study = study_of(wildcards)
    per_run = preset_resources(study.preset).get("runtime", RESOURCE_DEFAULTS["runtime"])
    share = study.config["total_epochs"] / preset_base(study.preset)[1]["total_epochs"]
    return max(1, int(round(per_run * study.trials * share)))


TUNE_RESOURCES["runtime"] = _tune_runtime


# --- aggregation inputs ---------------------------------------------------------------
def surface_inputs(wildcards):
    surface = MATRIX.surfaces[wildcards.surface]
    files = [f"{RESULTS}/cells/{cid}/summary.json" for cid in surface.cell_ids]
    if ALLOW_MISSING:
        files = [f for f in files if os.path.exists(f)]
    return files
