"""The SINGD demo's generated graph (llqr/data/synth_graph.py): seeded and Cora-shaped, written as the
Planetoid files Cora's loader reads (the same normalisation and split masks), tied to the GCN by the
config's checks; and the two SINGD demo surfaces on it and on the digits ViT render (slow)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import yaml

from conftest import REPO, run_snakemake, write_yaml
from llqr.config import ConfigError, resolve
from llqr.data import DataError, cora, paths, synth_graph


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    directory = tmp_path_factory.mktemp("data") / "synth_graph"
    return directory, synth_graph.prepare(directory)


def test_the_generator_is_seeded_and_cora_shaped():
    first, again, other = synth_graph.generate(0), synth_graph.generate(0), synth_graph.generate(1)
    np.testing.assert_array_equal(first["features"], again["features"])
    np.testing.assert_array_equal(first["test"], again["test"])
    assert dict(first["graph"]) == dict(again["graph"]) and dict(first["graph"]) != dict(other["graph"])
    labels = first["labels"]
    assert len(labels) == synth_graph.NODES == 294 and set(labels.tolist()) == set(range(synth_graph.CLASSES))
    # Cora's public split scaled down: 20 training nodes per class, then 10 validation, then 12 test
    for start, per_class in ((0, 20), (140, 10), (210, 12)):
        assert np.bincount(labels[start:start + per_class * 7], minlength=7).tolist() == [per_class] * 7
    assert sorted(first["test"].tolist()) == list(range(210, 294))
    # undirected, no self-loops, mostly within a class (the block model's homophily)
    edges = {(a, b) for a, nbrs in first["graph"].items() for b in nbrs}
    assert all((b, a) in edges and a != b for a, b in edges)
    assert np.mean([labels[a] == labels[b] for a, b in edges]) > 0.7
    # the class's own words are on more often than the others
    own = first["features"][np.arange(294)[:, None], labels[:, None] * 12 + np.arange(12)[None, :]]
    assert own.mean() > 2 * first["features"].mean()


def test_the_loader_reads_what_the_rule_writes(written):
    directory, counts = written
    assert counts["nodes"] == 294 and (counts["train"], counts["val"], counts["test"]) == (140, 70, 84)
    assert all(paths.synth_graph_file(directory, part).is_file() for part in paths.CORA_PARTS)
    assert paths.prepared_files("synth_graph", directory) == [paths.synth_graph_file(directory, part)
                                                                for part in paths.CORA_PARTS]
    data, graph = synth_graph.load(directory), synth_graph.generate(synth_graph.SEED)
    n = synth_graph.NODES
    assert data.name == "synth_graph" and data.input_shape == (n, n + synth_graph.WORDS) and data.num_classes == 7
    np.testing.assert_array_equal(data.labels, graph["labels"])
    assert {k: int(v.sum()) for k, v in data.masks.items()} == {"train": 140, "val": 70, "test": 84}
    assert np.flatnonzero(data.masks["val"]).tolist() == list(range(140, 210))
    # Cora's normalisation: row-normalised words; Â with self-loops, symmetric, nonzero exactly on the edges
    np.testing.assert_allclose(data.inputs[:, n:], cora.row_normalized(graph["features"]), rtol=1e-6)
    adj = data.inputs[:, :n]
    edges = np.zeros((n, n), bool)
    for a, nbrs in graph["graph"].items():
        edges[a, nbrs] = True
    np.testing.assert_array_equal(adj != 0, edges | np.eye(n, dtype=bool))
    np.testing.assert_allclose(adj, adj.T, rtol=1e-6)
    assert data.train_size == 1 and data.test_size == 84


def test_a_missing_file_names_the_rule(written, tmp_path):
    import shutil

    directory = tmp_path / "synth_graph"
    shutil.copytree(written[0], directory)
    paths.synth_graph_file(directory, "graph").write_bytes(b"\x80\x02")
    with pytest.raises(DataError, match=r"ind\.synth_graph\.graph is not a readable.*prepare_synth_graph"):
        synth_graph.load(directory)
    paths.synth_graph_file(directory, "ty").unlink()
    with pytest.raises(DataError, match=r"no synth_graph file .*ind\.synth_graph\.ty.*rule prepare_synth_graph"):
        synth_graph.load(directory)


def test_the_config_ties_the_gcn_to_the_graphs():
    cfg = resolve("gcn-synth-graph-singd", {})
    assert (cfg.model, cfg.dataset, cfg.batch_size, cfg.precision) == ("gcn", "synth_graph", 1, "fp32")
    with pytest.raises(ConfigError, match="model=gcn trains on the graph datasets"):
        resolve("gcn-synth-graph-singd", {"dataset": "digits"})
    with pytest.raises(ConfigError, match="model=gcn trains on the graph datasets"):
        resolve("digits-mlp-smoke", {"dataset": "synth_graph", "batch_size": 1})
    with pytest.raises(ConfigError, match="batch_size=1"):
        resolve("gcn-synth-graph-singd", {"batch_size": 4})
    vit = resolve("vit-digits-singd", {})
    assert (vit.model, vit.dataset, vit.lr_scheduler["name"]) == ("simple_vit", "digits", "cosine")


DEMOS = {"demo_singd_graph": 5, "demo_singd_vit": 10}  # surface: table.csv rows (optimizer x precision)


@pytest.mark.slow  # 20 training runs (10 GCN, 10 ViT) and the generated graph
@pytest.mark.workflow
def test_the_singd_graph_and_vit_demos_render(tmp_path):
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["surfaces"]
    assert all(base[name]["group"] == "demo_extra" for name in DEMOS)
    config = write_yaml(tmp_path / "demos.yaml", {"surfaces": {name: (base[name] if name in DEMOS else None)
                                                               for name in base}})
    work = tmp_path / "work"
    work.mkdir()
    run_snakemake(["--cores", "2", "demo_extra", "--configfile", str(config)], work, timeout=1800)
    for name, rows in DEMOS.items():
        table = list(csv.DictReader((work / "results" / "surfaces" / name / "table.csv").open()))
        # KFAC's inverses in bf16 may diverge on the ViT (they did at its first step on our machine)
        trained = [r for r in table if (r["optimizer"], r.get("precision")) != ("kfac", "bf16")]
        assert len(table) == rows and all(r["status"] == "ok" for r in trained), (name, table)
