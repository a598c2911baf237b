"""One source for every prepared-data path (llqr/data/paths.py): for each dataset, the files the
workflow's rules declare as outputs are the files its loader reads, and a training cell's rule
inputs are those files."""

from __future__ import annotations

import pytest
import yaml

from conftest import REPO, run_snakemake, slurm_free_env
from llqr.config.families import DATASETS, TRANSLATION_DATASETS
from llqr.config.fields import RunConfig
from llqr.data import DataError, load_dataset, paths

# the rule that writes each prepared file (rules/data.smk, rules/iwslt.smk)
RULES = {"digits": ["prepare_digits"], "mod_sum": ["prepare_modular"], "integral": ["prepare_integral"],
         "oscillation": ["prepare_oscillation"],
         "mnist": ["fetch_raw"],
         "cifar10": ["fetch_raw"], "cifar100": ["fetch_raw"], "svhn": ["fetch_svhn"] * 2, "imagenet": ["pack_imagenet"],
         "imagenet100": ["pack_imagenet100"], "cora": ["fetch_cora"] * 8,
         "synth_graph": ["prepare_synth_graph"] * 8, "imagewoof": ["decode_imagewoof"],
         **{corpus: ["iwslt_pack", "iwslt_cache"] for corpus in TRANSLATION_DATASETS}}


def _jobs(stdout: str) -> list[tuple[str, list[str], list[str]]]:
    """(rule, inputs, outputs) of every job in ``snakemake -n``'s listing."""
    jobs = []
    for block in stdout.split("\nrule ")[1:]:
        rule, _, body = block.partition(":\n")
        fields = dict(line.strip().split(": ", 1) for line in body.splitlines() if ": " in line)
        jobs.append((rule, fields.get("input", "").split(", "), fields["output"].split(", ")))
    return jobs


CONFIGS = [REPO / "config/config.yaml", REPO / "config/paper.yaml"]


def _cells() -> dict:
    """{dataset: a cell training on it} of the demo and paper configs (untuned cells)."""
    from llqr.workflow.matrix import expand, load_workflow_config

    by_dataset = {}
    for cell in sorted(expand(load_workflow_config(*CONFIGS)).cells.values(), key=lambda c: c.id):
        if cell.study is None:
            by_dataset.setdefault(cell.config["dataset"], cell)
    return by_dataset


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One dry run of the demo and paper configs asked for every dataset's prepared files (under
    data/, mod_sum at the default modulus) and one cell of each dataset they train on:
    ({prepared file: dataset}, {cell id: (dataset, cell)}, [(rule, inputs, outputs)])."""
    tmp = tmp_path_factory.mktemp("paths")
    modulus = RunConfig().modulus
    targets = {str(path): dataset for dataset in DATASETS
               for path in paths.prepared_files(dataset, paths.folder("data", dataset), modulus)}
    cells = _cells()
    summaries = [f"results/cells/{c.id}/summary.json" for c in cells.values()]
    proc = run_snakemake(["-n", "--configfile", *map(str, CONFIGS), "--cores", "1", *targets, *summaries], tmp,
                         env=slurm_free_env(tmp))
    return targets, cells, _jobs(proc.stdout)


def test_the_rules_write_what_the_loaders_read(dry_run):
    targets, _cells, jobs = dry_run
    assert set(RULES) == set(DATASETS)
    assert len(targets) == sum(len(rules) for rules in RULES.values())
    writer = {output: rule for rule, _inputs, outputs in jobs for output in outputs}
    for target, dataset in targets.items():
        assert target in writer, f"no rule writes {target}, which the {dataset} loader reads"
        assert writer[target] in RULES[dataset], (target, writer[target])


def test_a_cells_inputs_are_its_datasets_prepared_files(dry_run):
    """rules/common.smk's train inputs are paths.prepared_files under data_dir (a cell of each
    dataset the demo and paper configs train on)."""
    _targets, cells, jobs = dry_run
    assert {"digits", "mod_sum", "cifar10", "imagenet", "synth_de_en"} <= set(cells)
    inputs = {outputs[0]: set(inputs) - {""} for rule, inputs, outputs in jobs if rule == "train"}
    for dataset, cell in cells.items():
        files = {str(p) for p in paths.prepared_files(dataset, paths.folder("data", dataset), cell.config["modulus"])}
        assert inputs[f"results/cells/{cell.id}/summary.json"] == files, (dataset, cell.id)


@pytest.mark.parametrize("dataset", DATASETS)
def test_the_loader_reads_the_prepared_files(dataset, tmp_path):
    """With the folder empty the loader names the first prepared file it misses; with it in place,
    the next one; so the loader looks exactly where paths.prepared_files says."""
    cfg = RunConfig(dataset=dataset)
    expected = paths.prepared_files(dataset, paths.folder(tmp_path, dataset), cfg.modulus)
    assert expected
    for path in expected:
        with pytest.raises(DataError) as err:
            load_dataset(cfg, tmp_path)
        assert str(path) in str(err.value), (dataset, str(err.value))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")  # present (and unreadable): the loader goes on to the next file


def test_a_data_source_file_name_the_loader_would_not_read_is_refused(tmp_path):
    """mnist and cifar are read from the fetched archive under the loader's own name: another
    data_sources file name is refused when a cell needs the dataset, not left for the job to fail on."""
    off = {name: None for name in yaml.safe_load((REPO / "config/config.yaml").read_text())["surfaces"]}
    spec = {"presets": ["digits-mlp"], "seeds": [42], "axes": {"m": [{"label": "a", "set": {"dataset": "mnist"}}]}}
    path = tmp_path / "mnist.yaml"
    path.write_text(yaml.safe_dump({"surfaces": {**off, "on_mnist": spec},
                                    "data_sources": {"mnist": {"url": "https://example.invalid/m.npz",
                                                               "file": "other.npz"}}}))
    proc = run_snakemake(["-n", "--cores", "1", "--configfile", str(path)], tmp_path, env=slurm_free_env(tmp_path),
                         check=False)
    assert proc.returncode != 0
    assert "data_sources.mnist.file" in proc.stdout + proc.stderr and paths.MNIST in proc.stdout + proc.stderr
