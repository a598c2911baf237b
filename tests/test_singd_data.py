"""The SINGD study's data and models (ours): Cora read from Planetoid-format fixtures, the GCN and the
ImageNet-100 ViT (parameter counts from counting functions), the GCN trained through the runner, and
ImageNet-100 packed as a class subset of ImageNet."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from fixtures import cora as cora_fixture
from fixtures.imagenet import CLASSES as FIXTURE_CLASSES, make_images, write_folders
from llqr.config import ConfigError, resolve
from llqr.data import DataError, cora, paths, sources
from llqr.data.imagenet100 import CLASSES as IMAGENET100
from llqr.data.imagenet_pack import pack


@pytest.fixture(scope="module")
def cora_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("data") / "cora"
    return directory, cora_fixture.write(directory)


def _gcn_adjacency(graph: dict, n: int) -> np.ndarray:
    """D^-1/2 (A + I) D^-1/2 from the edge set, written independently of the loader."""
    edges = {(int(a), int(b)) for a, nbrs in graph.items() for b in nbrs if int(a) != int(b)}
    edges |= {(b, a) for a, b in edges} | {(i, i) for i in range(n)}
    degree = np.bincount([a for a, _ in edges], minlength=n).astype(np.float64)
    out = np.zeros((n, n))
    for a, b in edges:
        out[a, b] = 1.0 / np.sqrt(degree[a] * degree[b])
    return out


def test_cora_loader_reads_planetoid_files(cora_dir):
    directory, expected = cora_dir
    data = cora.load(directory)
    n = expected["nodes"]
    assert data.input_shape == (n, n + expected["features"].shape[1]) and data.num_classes == expected["classes"]
    np.testing.assert_allclose(data.inputs[:, :n], _gcn_adjacency(expected["graph"], n), rtol=1e-6)
    rows = expected["features"] / np.maximum(expected["features"].sum(1, keepdims=True), 1e-30)
    np.testing.assert_allclose(data.inputs[:, n:], rows, rtol=1e-6)
    assert not data.inputs[3, n:].any()  # the featureless node
    np.testing.assert_array_equal(data.labels, expected["labels"])
    train, val = expected["train"], expected["train"] + cora.VAL_NODES
    assert np.flatnonzero(data.masks["train"]).tolist() == list(range(train))
    assert np.flatnonzero(data.masks["val"]).tolist() == list(range(train, val))
    assert np.flatnonzero(data.masks["test"]).tolist() == sorted(expected["test"].tolist())
    # the runner's view: one example, labels outside the split ignored, the test nodes scored
    x, y = data.train_batch(np.array([0]), 0)
    assert x.shape == (1, *data.input_shape) and data.train_size == 1
    assert (y[0] != cora.IGNORE).sum() == train and data.test_size == len(expected["test"])
    (ex, ey), = list(data.eval_batches(7))
    assert ex.shape == x.shape and set(np.flatnonzero(ey[0] != cora.IGNORE)) == set(expected["test"].tolist())


def test_cora_missing_or_corrupt_files_are_named(cora_dir, tmp_path):
    import shutil

    directory = tmp_path / "cora"
    shutil.copytree(cora_dir[0], directory)
    graph = paths.cora_file(directory, "graph")
    graph.write_bytes(graph.read_bytes()[:20])
    with pytest.raises(DataError, match=r"ind\.cora\.graph is not a readable Planetoid pickle.*fetch_cora"):
        cora.load(directory)
    paths.cora_file(directory, "tx").unlink()
    with pytest.raises(DataError, match=r"no Cora file .*ind\.cora\.tx.*fetch_cora"):
        cora.load(directory)
    assert sources.cora_source("test.index")["url"].endswith("/data/ind.cora.test.index")
    assert sources.cora_source("x", {"local": "/m"})["local"] == "/m/ind.cora.x"


def _vit_params(patch: int, image: int, dim: int, depth: int, mlp: int, classes: int, channels: int = 3) -> int:
    """ViT with a class token (llqr/models/vit.py): conv stem, token, positions, blocks, final LN, head."""
    tokens = (image // patch) ** 2 + 1
    stem = patch * patch * channels * dim + dim + dim + tokens * dim
    block = 2 * 2 * dim + 4 * (dim * dim + dim) + dim * mlp + mlp + mlp * dim + dim
    return stem + depth * block + 2 * dim + dim * classes + classes


def _count(model, x) -> int:
    variables = jax.eval_shape(lambda k, inp: model.init(k, inp, train=False), jax.random.PRNGKey(0), x)
    return sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(variables["params"]))


@pytest.mark.parametrize("name, shape, classes, expected", [
    # Kipf & Welling's GCN on Cora: (F·16 + 16) + (16·7 + 7), F = 1433 (hidden 16: their value; the study's
    # width was not retrieved)
    ("gcn", (1, 2708, 2708 + 1433), 7, (1433 * 16 + 16) + (16 * 7 + 7)),
    # the ImageNet-100 ViT: ViT-Ti/16 at 224 (the study's sizes were not retrieved)
    ("singd_vit", (1, 224, 224, 3), 100, _vit_params(16, 224, 192, 12, 768, 100)),
])
def test_parameter_counts(name, shape, classes, expected):
    from llqr.models import build_model

    cfg = resolve("digits-mlp-smoke", {"model": name, "dataset": "cora" if name == "gcn" else "imagenet100",
                                       "batch_size": 1})
    assert _count(build_model(cfg, num_classes=classes), jax.ShapeDtypeStruct(shape, np.float32)) == expected


def test_gcn_layers_are_captured_dense_kernels():
    """The Kronecker capture sees W1 and W2 as Dense layers with one row per node; Â stays outside."""
    import jax.numpy as jnp

    from llqr.models.gcn import GCN
    from llqr.optim.capture import capture

    n, f = 6, 4
    x = jnp.concatenate([jnp.eye(n), jax.random.uniform(jax.random.PRNGKey(1), (n, f))], axis=1)[None]
    model = GCN(num_classes=3)
    variables = model.init(jax.random.PRNGKey(0), x)
    y = jnp.array([[0, 1, 2, cora.IGNORE, cora.IGNORE, 1]])

    def loss(out, labels):
        mask = labels != cora.IGNORE
        picked = jnp.take_along_axis(out, jnp.maximum(labels, 0)[..., None], -1)[..., 0]
        return -(picked * mask).sum() / mask.sum()

    _, found = jax.jit(lambda v, inp, lab: capture(lambda w, z: model.apply(w, z), v, inp, lab, loss))(variables, x, y)
    assert {k: a.shape for k, (a, _g) in found.items()} == {("conv1", "kernel"): (n, f), ("conv2", "kernel"): (n, 16)}
    # the adjacency is the identity here, so the second layer's input is ReLU(X W1 + b1)
    hidden = jax.nn.relu(x[0, :, n:] @ variables["params"]["conv1"]["kernel"] + variables["params"]["conv1_bias"])
    np.testing.assert_allclose(found[("conv2", "kernel")][0], hidden, rtol=1e-6)


def test_the_gcn_trains_on_the_graph_through_the_runner(cora_dir, tmp_path):
    from llqr.train.loop import run

    directory, _expected = cora_dir
    cfg = resolve("digits-mlp-smoke", {"model": "gcn", "dataset": "cora", "dataset_dir": str(directory),
                                       "batch_size": 1, "total_epochs": 12, "optimizer": "adam", "learning_rate": 0.01,
                                       "test_eval_freq": 10, "lr_scheduler": "constant"})
    summary = run(cfg, cell_id="g/default/seed42", results_dir=tmp_path, checkpoints_dir=tmp_path,
                  data_root=tmp_path, out=lambda _m: None)
    assert summary["status"] == "ok", summary
    events = [json.loads(line) for line in (tmp_path / "cells/g/default/seed42/metrics.jsonl").read_text().splitlines()]
    losses = [e["train_loss"] for e in events if e["event"] == "train"]
    assert len(losses) >= 2 and losses[-1] < losses[0]
    with pytest.raises(ConfigError, match="batch_size=1"):
        resolve("digits-mlp-smoke", {"model": "gcn", "dataset": "cora", "batch_size": 4})
    with pytest.raises(ConfigError, match="model=gcn trains on the graph"):
        resolve("digits-mlp-smoke", {"model": "mlp", "dataset": "cora", "batch_size": 1})


def test_imagenet100_is_a_class_subset_pack(tmp_path):
    assert len(IMAGENET100) == len(set(IMAGENET100)) == 100 and IMAGENET100[:2] == ("n02869837", "n01749939")
    images = make_images()
    source = write_folders(tmp_path / "folders", images)
    keep = FIXTURE_CLASSES[1:]
    manifest = pack(source, tmp_path / "subset", shard_size_mb=0.01, log=lambda *_a: None, classes=keep)
    assert manifest["classes"] == sorted(keep) and manifest["num_classes"] == 2
    train = np.load(tmp_path / "subset" / manifest["splits"]["train"]["index"]["name"])
    assert sorted(set(train["label"].tolist())) == [0, 1]
    assert manifest["counts"]["train"] == sum(w in keep for w, _n, _b in images.train)
    with pytest.raises(DataError, match="lacks 1 of the 3 requested classes"):
        pack(source, tmp_path / "bad", shard_size_mb=0.01, log=lambda *_a: None, classes=(*keep, "n09999999"))


@pytest.fixture(scope="module")
def woof_dir(tmp_path_factory):
    from fixtures import imagewoof as woof_fixture
    from llqr.data import imagewoof

    directory = tmp_path_factory.mktemp("data") / "imagewoof"
    expected = woof_fixture.write(paths.imagewoof_archive(directory))
    imagewoof.decode(paths.imagewoof_archive(directory), paths.imagewoof_meta(directory).parent, log=lambda *_a: None)
    return directory, expected


def test_imagewoof_decoded_once_and_streamed(woof_dir):
    from llqr.data import imagewoof

    directory, expected = woof_dir
    meta = json.loads(paths.imagewoof_meta(directory).read_text())
    assert meta["counts"] == {s: len(v) for s, v in expected.items()} and meta["size"] == imagewoof.STORED
    data = imagewoof.load(directory, seed=3)
    labels = [imagewoof.CLASSES.index(w) for w, _n in expected["train"]]
    np.testing.assert_array_equal(data.y_train, labels)
    assert data.x_train.dtype == np.uint8 and data.x_train.shape[1:] == (256, 256, 3)
    x, y = data.train_batch(np.array([0, 3, 5]), 7)
    assert x.shape == (3, 224, 224, 3) and x.dtype == np.float32 and y.tolist() == [labels[i] for i in (0, 3, 5)]
    np.testing.assert_array_equal(x, data.train_batch(np.array([0, 3, 5]), 7)[0])  # batch k replays
    assert not np.array_equal(x, data.train_batch(np.array([0, 3, 5]), 8)[0])
    (ex, ey), = list(data.eval_batches(64))
    centre = (data.x_test[:, 16:240, 16:240] / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(ex, centre, rtol=1e-5, atol=1e-5)
    assert data.input_shape == (224, 224, 3) and len(ey) == data.test_size == len(expected["val"])
    for _ in range(50):  # a crop window always lies inside the image and keeps the aspect bounds
        top, left, h, w = imagewoof.crop_params(np.random.default_rng(_), 256, 200)
        assert 0 <= top <= 256 - h and 0 <= left <= 200 - w and h > 0 and w > 0


def test_imagewoof_bad_archive_and_missing_arrays_are_named(woof_dir, tmp_path):
    from llqr.data import imagewoof
    from llqr.data.fetch import head_md5, verify

    archive = paths.imagewoof_archive(woof_dir[0])
    truncated = tmp_path / "imagewoof2.tgz"
    truncated.write_bytes(archive.read_bytes()[:3000])
    with pytest.raises(DataError, match="not a readable imagewoof2 archive.*fetch_imagewoof"):
        imagewoof.decode(truncated, tmp_path / "decoded", log=lambda *_a: None)
    with pytest.raises(DataError, match="ImageWoof is not decoded.*decode_imagewoof"):
        imagewoof.load(tmp_path / "nothing")
    with pytest.raises(DataError, match="3000 bytes, expected"):
        verify(truncated, {"size": archive.stat().st_size})
    with pytest.raises(DataError, match="first MiB mismatch"):
        verify(archive, {"md5_first_mib": "0" * 32})
    verify(archive, {"size": archive.stat().st_size, "md5_first_mib": head_md5(archive)})
    assert sources.imagewoof_source()["md5_first_mib"] == sources.IMAGEWOOF_MD5_FIRST_MIB
