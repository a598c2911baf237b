"""The one validator: every refusal of a workflow config (or of one run's config) before a job is queued.

``check_workflow(config)`` is what ``snakemake`` (rules/common.smk), ``python -m llqr.plan`` and the
tests run on a workflow config, in this order, each problem one ConfigError naming the key:

1. the JSON schema (config/schema/config.schema.yaml), reported as its best-matching error, and its
   defaults filled in when asked (as Snakemake's ``validate`` does);
2. every string that can reach a file name or a command line: the storage folders, the data
   sources' file names and local copies, the cluster account and partition and the per-preset SLURM
   resources (``slurm_extra`` is pasted into ``sbatch``'s shell command unquoted);
3. every surface expanded into cells (llqr.workflow.matrix.expand): surface, axis, label and preset names,
   run-config keys, values and cross-key rules (llqr.config.presets.build_config), and what the
   runner would refuse at job time (llqr.config.validate.check_runnable) for each cell's config
   exactly as its job will get it, tuning-study corners included;
4. per cell, what depends on its job's resources: data_parallel batches must split over the
   preset's GPUs.

``check_run_config(values)`` is the single-run part (build_config + check_runnable), used by
``python -m llqr.train``. JAX-free (tests/test_bad_configs.py checks that importing this module
loads no jax, flax or optax), so the Snakefile parses fast.
"""

from __future__ import annotations

from ..config import ConfigError, build_config
from ..config.validate import check_data_path, check_name, check_safe_text
from .job_checks import check_job
from .matrix import SCHEMA, Matrix, expand
from .resources import preset_resources, resource

STORAGE_KEYS = ("results_dir", "checkpoints_dir", "data_dir")
# Resources the SLURM executor quotes itself (shlex) and the one it pastes into the shell as is.
_QUOTED_RESOURCES = ("slurm_partition", "slurm_account", "constraint", "gpu_model")
_RAW_RESOURCES = ("slurm_extra",)


def check_workflow(config: dict, presets_dir=None, fill_defaults: bool = False) -> Matrix:
    """Check a (merged) workflow config and return its matrix; ConfigError naming the key otherwise.
    ``fill_defaults``: also set the schema's defaults in ``config`` (the Snakefile's config)."""
    check_schema(config, fill_defaults=fill_defaults)
    check_strings(config)
    matrix = expand(config, presets_dir)
    check_jobs(config, matrix)
    return matrix


def check_run_config(values: dict):
    """One run's config (preset values + overrides, or a cell's params) as a RunConfig, refused
    with a ConfigError if invalid or if the runner would refuse it."""
    cfg = build_config(values)
    check_job(cfg)
    return cfg


def check_schema(config: dict, fill_defaults: bool = False) -> None:
    """The JSON schema's check as one ConfigError naming the offending key (Snakemake's own message
    for a bad surface is only "not valid under any of the given schemas")."""
    import jsonschema
    import yaml

    schema = yaml.safe_load(SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "config"
        raise ConfigError(f"{where}: {error.message} (schema config/schema/{SCHEMA.name})")
    if fill_defaults:
        _with_defaults(jsonschema, validator.__class__)(schema).validate(config)


def _with_defaults(jsonschema, base):
    """``base`` that also sets every property's schema default where the instance lacks it (the
    recipe Snakemake's ``validate`` uses, https://python-jsonschema.readthedocs.io/en/latest/faq/)."""
    properties = base.VALIDATORS["properties"]

    def set_defaults(validator, props, instance, schema):
        for name, sub in props.items():
            if "default" in sub and isinstance(instance, dict):
                instance.setdefault(name, sub["default"])
        yield from properties(validator, props, instance, schema)

    return jsonschema.validators.extend(base, {"properties": set_defaults})


def check_strings(config: dict) -> None:
    """Every workflow-config string that reaches a path or a command line: no shell metacharacters
    or control characters; file names without '/' or '..'."""
    for key in STORAGE_KEYS:
        value = config.get(key)
        if value is not None:
            check_safe_text(value, key)
            if not str(value).strip():
                raise ConfigError(f"{key} must not be empty")
    for name, source in (config.get("data_sources") or {}).items():
        check_name(name, "data_sources entry")
        source = source or {}
        if source.get("file") is not None:
            check_name(source["file"], f"data_sources.{name}.file")
        for key in ("local", "source_dir"):
            if source.get(key):
                check_data_path(source[key], f"data_sources.{name}.{key}")
    for key in ("account", "partition"):
        value = (config.get("cluster") or {}).get(key)
        if value:
            check_safe_text(value, f"cluster.{key}", allow_space=False)
    section = config.get("resources") or {}
    entries = {"resources.default": section.get("default") or {}}
    entries.update({f"resources.presets.{p}": r or {} for p, r in (section.get("presets") or {}).items()})
    for where, res in entries.items():
        for key in _QUOTED_RESOURCES:
            if res.get(key) is not None:
                check_safe_text(res[key], f"{where}.{key}", allow_space=False)
        for key in _RAW_RESOURCES:
            if res.get(key) is not None:
                check_safe_text(res[key], f"{where}.{key}")


def check_jobs(config: dict, matrix: Matrix) -> None:
    """Per cell, what its job's resources decide: data_parallel batches split over the preset's GPUs."""
    gpus: dict = {}
    for cell in matrix.cells.values():
        if not cell.config.get("data_parallel"):
            continue
        if cell.preset not in gpus:
            gpus[cell.preset] = int(resource(preset_resources(config, cell.preset), "gpu") or 0)
        try:
            check_job(cell.config, devices=gpus[cell.preset])
        except ConfigError as exc:
            raise ConfigError(f"cell {cell.id} (resources.presets.{cell.preset}.gpu={gpus[cell.preset]}): "
                              f"{exc}") from None
