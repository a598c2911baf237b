"""One short CIFAR-10 cell through the real Snakemake rules: fetch (from a local fixture archive,
checksum-verified), the binary loader with augmentation, a CIFAR model, aggregation. The model is
the small SimpleCNN: compiling ResNet-18 took most of this test's minute on CPU, and what is tested
here is the data path through the rules (ResNet-18's layout is checked by its parameter count)."""

import hashlib
import json

import pytest

from conftest import REPO, run_snakemake, write_yaml
from fixtures.cifar import write_archive
from llqr.workflow.matrix import load_workflow_config

pytestmark = pytest.mark.workflow


def test_short_cifar_cell_runs_through_snakemake(tmp_path):
    archive = tmp_path / "mirror" / "cifar-10-binary.tar.gz"
    write_archive(archive, "cifar10", per_file=4, n_test=12)
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    surfaces = {name: None for name in load_workflow_config(REPO / "config/config.yaml")["surfaces"]}
    surfaces["cifar_smoke"] = {
        "group": "demo",
        "title": "CIFAR-10 smoke",
        "caption": "two updates of a small CNN on the ResNet-18 preset's pipeline, on a fixture archive",
        "metric": "test_accuracy",
        "presets": ["resnet18-cifar10"],
        "seeds": [7],
        "axes": {"run": [{"label": "smoke", "set": {"model": "simple_cnn", "use_preconditioner": False, "max_steps": 2,
                                                     "batch_size": 8, "eval_batch_size": 16}}]},
        "table": {"rows": ["preset"], "columns": ["run"]},
    }
    config = write_yaml(tmp_path / "cifar.yaml", {
        "surfaces": surfaces,
        "data_sources": {"cifar10": {"url": "https://example.invalid/cifar-10-binary.tar.gz",
                                     "file": "cifar-10-binary.tar.gz", "sha256": sha, "local": str(archive)}},
    })
    work = tmp_path / "work"
    work.mkdir()
    run_snakemake(["--cores", "2", "--configfile", str(config)], work)
    assert (work / "data" / "cifar10" / "raw" / "cifar-10-binary.tar.gz").read_bytes() == archive.read_bytes()
    summaries = list((work / "results" / "cells" / "resnet18-cifar10").glob("*/seed7/summary.json"))
    assert len(summaries) == 1
    summary = json.loads(summaries[0].read_text())
    assert summary["status"] == "ok" and summary["steps"] == 2
    assert summary["final"]["value"] in {100.0 * k / 12 for k in range(13)}
    assert (work / "results" / "surfaces" / "cifar_smoke" / "table.csv").is_file()
