"""MNIST: the checksummed mnist.npz through the real fetch step, loader and runner (tiny fixture)."""

import json

import numpy as np
import pytest

from llqr.config import build_config, resolve
from llqr.data import DataError, load_dataset
from llqr.data.fetch import fetch, file_digest
from llqr.data.mnist import FILENAME, MEAN, STD
from llqr.train.loop import run


def write_mnist(path, n_train=40, n_test=12, seed=0):
    """A small archive in mnist.npz's layout: uint8 (N, 28, 28) images, uint8 labels."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"x_train": rng.integers(0, 256, (n_train, 28, 28), np.uint8),
              "y_train": (np.arange(n_train) % 10).astype(np.uint8),
              "x_test": rng.integers(0, 256, (n_test, 28, 28), np.uint8),
              "y_test": (np.arange(n_test) % 10).astype(np.uint8)}
    np.savez_compressed(path, **arrays)
    return arrays


def test_fetch_verifies_and_the_loader_normalises_as_the_reference(tmp_path):
    src = tmp_path / "elsewhere" / FILENAME
    arrays = write_mnist(src)
    dest = tmp_path / "data" / "mnist" / "raw" / FILENAME
    fetch(None, dest, {"sha256": file_digest(src, "sha256")}, local=str(src))
    data = load_dataset(build_config({"dataset": "mnist"}), tmp_path / "data")
    assert data.x_train.shape == (40, 28, 28, 1) and data.x_test.shape == (12, 28, 28, 1) and data.num_classes == 10
    np.testing.assert_allclose(data.x_train[..., 0], (arrays["x_train"] / 255.0 - MEAN) / STD, rtol=1e-6)
    assert data.y_test.dtype == np.int32 and list(data.y_test[:3]) == [0, 1, 2]
    with pytest.raises(DataError, match="sha256 mismatch"):
        fetch(None, tmp_path / "other" / FILENAME, {"sha256": "0" * 64}, local=str(src))


def test_missing_corrupt_and_wrong_archives_name_the_file(tmp_path):
    cfg = build_config({"dataset": "mnist"})
    with pytest.raises(DataError, match=r"raw/mnist\.npz"):
        load_dataset(cfg, tmp_path)
    path = tmp_path / "mnist" / "raw" / FILENAME
    write_mnist(path)
    blob = bytearray(path.read_bytes())
    blob[200:260] = b"\0" * 60  # inside the compressed x_train member
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match=f"{path}.*corrupt"):
        load_dataset(cfg, tmp_path)
    np.savez(path, x_train=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError, match="missing arrays"):
        load_dataset(cfg, tmp_path)


def test_a_tiny_mnist_mlp_trains(tmp_path):
    write_mnist(tmp_path / "data" / "mnist" / "raw" / FILENAME, n_train=64)
    cfg = resolve("digits-mlp-smoke", {"dataset": "mnist", "total_epochs": 1, "batch_size": 16})
    summary = run(cfg, cell_id="m/mnist/seed42", results_dir=tmp_path / "r", checkpoints_dir=tmp_path / "c",
                  data_root=tmp_path / "data", out=lambda _line: None)
    assert summary["status"] == "ok" and summary["total_steps"] == 5  # 4 updates + the final evaluation step
    record = json.loads((tmp_path / "r" / "cells" / "m/mnist/seed42" / "record.json").read_text())
    assert record["dataset_path"].endswith("raw/mnist.npz")


def test_the_workflow_fetches_and_verifies_mnist_for_a_cell(tmp_path):
    from conftest import run_snakemake, write_yaml
    from test_workflow import DEFAULT_SURFACES

    src = tmp_path / "have" / FILENAME
    write_mnist(src, n_train=32)
    surface = {"group": "demo", "title": "mnist", "metric": "test_accuracy", "presets": ["digits-mlp-smoke"],
               "seeds": [1], "axes": {"data": [{"label": "mnist", "set": {"dataset": "mnist", "max_steps": 3}}]}}
    config = write_yaml(tmp_path / "mnist.yaml", {
        "surfaces": {**{n: None for n in DEFAULT_SURFACES}, "mnist": surface},
        "data_sources": {"mnist": {"local": str(src), "file": FILENAME, "sha256": file_digest(src, "sha256")}}})
    work = tmp_path / "work"
    work.mkdir()
    run_snakemake(["--cores", "1", "--configfile", str(config)], work)
    assert (work / "data" / "mnist" / "raw" / FILENAME).read_bytes() == src.read_bytes()
    summaries = list((work / "results" / "cells").rglob("summary.json"))
    assert len(summaries) == 1 and json.loads(summaries[0].read_text())["status"] == "ok"
