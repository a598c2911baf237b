# Config validation, the cell matrix, and the input/resource functions the rules use.
import json
import os

from snakemake.exceptions import WorkflowError

from llqr.config import ConfigError
from llqr.config.families import TRANSLATION_DATASETS
from llqr.data import paths as data_paths
from llqr.workflow.jobparams import JobParams, config_flag, normalise_dir
from llqr.workflow.cells import preset_base
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


TRANSLATION_CORPORA = TRANSLATION_DATASETS


wildcard_constraints:
    cell=r"[^/]+/[^/]+/seed\d+",
    surface=r"[^/]+",
    study=r"[^/]+/[^/]+",
    corpus="|".join(TRANSLATION_CORPORA),
    lang="de|en",


def surface_targets(group, required=False):
    names = MATRIX.group(group)
    if required and not names:
        raise WorkflowError(f"no '{group}' surfaces in the config; add --configfile config/paper.yaml")
    return [f"{RESULTS}/surfaces/{name}/table.md" for name in names]


def cell_of(wildcards):
    try:
        return MATRIX.cells[wildcards.cell]
    except KeyError:
        raise WorkflowError(f"cell '{wildcards.cell}' is not in any surface of the config") from None


# --- data inputs of a cell ------------------------------------------------------------
# Every prepared file's name and place comes from llqr/data/paths.py, which the loaders read too.
def data_folder(dataset):
    """{DATA}/<dataset> (a wildcard such as "{corpus}" works as the dataset)."""
    return data_paths.folder(DATA, dataset)


def raw_archive(name):
    """The archive that fetch_raw puts in {DATA}/<name>/raw/: the loader's own file name where the
    loader reads the archive itself (mnist, cifar), else data_sources.<name>.file."""
    source = config["data_sources"][name]
    fixed = data_paths.RAW_FILES.get(name)
    if fixed is not None and source.get("file") not in (None, fixed):
        raise WorkflowError(
            f"data_sources.{name}.file is {source['file']!r}, but the {name} loader reads {fixed}: "
            f"set file: {fixed}"
        )
    return str(data_paths.raw_file(data_folder(name), fixed or source["file"]))


def config_inputs(run_config):
    """The prepared files a job with ``run_config`` reads (llqr.data.paths.prepared_files)."""
    if run_config["dataset_dir"]:  # the user points at prepared data themselves
        return []
    dataset = run_config["dataset"]
    if dataset in data_paths.RAW_FILES:
        raw_archive(dataset)  # refuses a data_sources file name the loader would not find
    files = data_paths.prepared_files(dataset, data_folder(dataset), run_config["modulus"])
    return [str(path) for path in files]


def train_inputs(wildcards):
    return config_inputs(cell_of(wildcards).config)


def bpe_merges(wildcards):
    """The joint BPE merge count of a translation corpus (rules/iwslt.smk): its own or the default."""
    source = config["data_sources"].get(wildcards.corpus, {})
    return source.get("bpe_merges") or config["iwslt_bpe_merges"]


# --- tuning studies (rules/tune.smk) ---------------------------------------------------
def study_of(wildcards):
    try:
        return MATRIX.studies[wildcards.study]
    except KeyError:
        raise WorkflowError(f"study '{wildcards.study}' is not defined by any surface's 'tune' block") from None


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
