"""ImageNet: pack either input layout into tar shards, stage them, read them with the worker pool."""

import os
import shutil
import subprocess
import sys
import tarfile
import textwrap

import numpy as np
import pytest

from conftest import REPO, run_snakemake
from fixtures.imagenet import CLASSES, make_images, write_archives, write_folders
from llqr.data import imagenet
from llqr.data.augment import batch_rng
from llqr.data.errors import DataError
from llqr.data.imagenet_decode import decode, normalize, resize_crop, train_params
from llqr.data.imagenet_shards import INDEX_DTYPE
from llqr.data.stream import BatchStream

SHARD_MB = 0.01  # ~10 KiB shards: several per split


def _quiet(*_a, **_k):
    pass


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    images = make_images()
    archives = write_archives(root / "archives", images)
    folders = write_folders(root / "folders", images)
    imagenet.pack(archives, root / "from_archives", shard_size_mb=SHARD_MB, log=_quiet)
    imagenet.pack(folders, root / "from_folders", shard_size_mb=SHARD_MB, log=_quiet)
    return {"root": root, "images": images, "archives": archives, "shards": root / "from_archives",
            "folder_shards": root / "from_folders"}


def _copy(src, dest):
    shutil.copytree(src, dest)
    return dest


def test_shards_are_plain_tars_indexed_by_offset(packed):
    shards, images = packed["shards"], packed["images"]
    manifest = imagenet.read_manifest(shards)
    assert manifest["classes"] == list(CLASSES) and manifest["counts"] == {"train": 12, "val": 6}
    expected = {"train": images.expected_train(), "val": images.expected_val()}
    originals = {"train": {(w, n): b for w, n, b in images.train},
                 "val": dict(zip([(w, n) for w, n, _ in images.expected_val()], images.val_bytes()))}
    for split in ("train", "val"):
        info = manifest["splits"][split]
        assert len(info["shards"]) > 1
        index = np.load(shards / info["index"]["name"])
        assert index.dtype == INDEX_DTYPE and index["label"].tolist() == [lab for _w, _n, lab in expected[split]]
        members = []
        for shard in info["shards"]:
            with tarfile.open(shards / shard["name"]) as tar:  # an ordinary tar: `tar tf` lists it
                members += [(shard["name"], m) for m in tar.getmembers()]
        assert [m.name for _s, m in members] == [f"{split}/{w}/{n}" for w, n, _lab in expected[split]]
        for row, (shard_file, member), (wnid, name, _lab) in zip(index, members, expected[split]):
            assert info["shards"][row["shard"]]["name"] == shard_file and row["offset"] == member.offset_data
            with open(shards / shard_file, "rb") as fh:
                data = os.pread(fh.fileno(), int(row["length"]), int(row["offset"]))
            assert data == originals[split][(wnid, name)]
    # the class-folder tree gives byte-identical shards and indexes (same order, no time stamps)
    other = imagenet.read_manifest(packed["folder_shards"])

    def digests(m):
        return [f["sha256"] for s in ("train", "val") for f in m["splits"][s]["shards"] + [m["splits"][s]["index"]]]

    assert digests(other) == digests(manifest)
    assert not [p for p in shards.iterdir() if p.name.startswith(".")]  # no temporary files left behind


def test_val_labels_from_the_devkit(packed, tmp_path):
    want = np.load(packed["shards"] / "val-index.npy")["label"]
    for labels in ("devkit", "ground_truth"):
        src = write_archives(tmp_path / labels, packed["images"], labels=labels)
        imagenet.pack(src, tmp_path / f"{labels}_out", shard_size_mb=SHARD_MB, log=_quiet)
        np.testing.assert_array_equal(np.load(tmp_path / f"{labels}_out" / "val-index.npy")["label"], want)
    src = write_archives(tmp_path / "gt_only", packed["images"], labels="ground_truth_only")
    with pytest.raises(DataError, match=r"class IDs .*needs the devkit's data/meta.mat: put ILSVRC2012_devkit_t12"):
        imagenet.pack(src, tmp_path / "x", log=_quiet)
    src = write_archives(tmp_path / "no_labels", packed["images"], labels="none")
    with pytest.raises(DataError, match="incomplete: missing one of LOC_val_solution.csv"):
        imagenet.pack(src, tmp_path / "y", log=_quiet)
    assert not (tmp_path / "y" / "manifest.json").exists()


def test_stage_copies_to_slurm_tmpdir_once(packed, tmp_path, monkeypatch):
    scratch = tmp_path / "node"
    scratch.mkdir()
    monkeypatch.setenv("SLURM_TMPDIR", str(scratch))
    staged = imagenet.stage(packed["shards"], log=_quiet)
    assert staged.parent == scratch and (staged / "manifest.json").is_file()
    for f in imagenet.read_manifest(staged)["splits"]["train"]["shards"]:
        assert (staged / f["name"]).stat().st_size == f["size"]
    stamps = {p.name: p.stat().st_mtime_ns for p in staged.iterdir()}
    victim = staged / "train-00001.tar"
    with open(victim, "r+b") as fh:  # a copy cut short on an earlier run: staged again
        fh.truncate(100)
    assert imagenet.stage(packed["shards"], log=_quiet) == staged
    assert victim.stat().st_size == (packed["shards"] / victim.name).stat().st_size
    assert all(p.stat().st_mtime_ns == stamps[p.name] for p in staged.iterdir() if p.name != victim.name)
    monkeypatch.delenv("SLURM_TMPDIR")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # on the shards' own filesystem: copying would gain nothing
    assert imagenet.stage(packed["shards"], log=_quiet) == packed["shards"]
    monkeypatch.delenv("TMPDIR")
    assert imagenet.stage(packed["shards"], log=_quiet) == packed["shards"]  # no scratch: read in place


def test_train_batches_replay_and_match_the_reference_transform(packed, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_TMPDIR", str(tmp_path))
    images, seed, bs = packed["images"], 5, 4
    by_pos = {i: b for i, (_w, _n, b) in enumerate(sorted(images.train, key=lambda t: (t[0], t[1])))}
    labels = np.array([lab for _w, _n, lab in images.expected_train()])
    stream = BatchStream(12, bs, seed)
    with imagenet.load(packed["root"] / "from_archives", seed=seed, workers=2, log=_quiet) as ds:
        assert ds.path.startswith(str(tmp_path)) and (ds.num_classes, ds.train_size, ds.test_size) == (3, 12, 6)
        ds.attach_stream(stream, depth=2)
        got = [ds.train_batch(stream.indices(k), k) for k in range(5)]  # crosses an epoch boundary
        again = ds.train_batch(stream.indices(1), 1)  # a jump back: decoded on demand, same result
    for k, (x, y) in enumerate(got):
        idx = stream.indices(k)
        assert x.shape == (bs, 224, 224, 3) and x.dtype == np.float32 and y.dtype == np.int32
        np.testing.assert_array_equal(y, labels[idx])
        assert -2.2 < x.min() and x.max() < 2.7 and abs(float(x.mean())) < 0.5
    np.testing.assert_array_equal(again[0], got[1][0])
    params = train_params(batch_rng(seed, 3), bs)  # the transform the reference describes, image by image
    for j, i in enumerate(stream.indices(3)):
        size, top, left, flip = params[j]
        want = resize_crop(decode(by_pos[int(i)]), size, top, left)
        np.testing.assert_allclose(got[3][0][j], normalize(want[:, ::-1] if flip else want), atol=1e-5)
    # another process pool, one worker, no prefetch: the same batches (a resumed run replays exactly)
    with imagenet.load(packed["shards"], seed=seed, workers=1, prefetch=0, stage=False) as ds2:
        for k in (4, 0):
            x, y = ds2.train_batch(stream.indices(k), k)
            np.testing.assert_array_equal(x, got[k][0])
            np.testing.assert_array_equal(y, got[k][1])
        assert not np.array_equal(ds2.train_batch(stream.indices(0), 1)[0], got[0][0])  # batch number matters


def test_eval_batches_are_deterministic_centre_crops(packed):
    images = packed["images"]
    with imagenet.load(packed["shards"], seed=0, workers=2, stage=False) as ds:
        first = list(ds.eval_batches(4))
        second = list(ds.eval_batches(5))
    assert [len(y) for _x, y in first] == [4, 2] and [len(y) for _x, y in second] == [5, 1]
    x1, y1 = np.concatenate([x for x, _ in first]), np.concatenate([y for _, y in first])
    np.testing.assert_array_equal(x1, np.concatenate([x for x, _ in second]))
    assert y1.tolist() == [lab for _w, _n, lab in images.expected_val()]
    pixels = decode(images.val_bytes()[0])  # validation image 1 is 256 x 256: the resize is the identity
    assert pixels.shape == (256, 256, 3)
    np.testing.assert_allclose(x1[0], normalize(pixels[16:240, 16:240]), atol=1e-6)


def _tf_bilinear(image, out_h, out_w):
    """tf.image.resize(method='bilinear', antialias=False) pixel by pixel (half-pixel centres)."""
    h, w, c = image.shape
    out = np.zeros((out_h, out_w, c))
    for i in range(out_h):
        y = (i + 0.5) * h / out_h - 0.5
        y0, y1, ly = max(int(np.floor(y)), 0), min(int(np.ceil(y)), h - 1), y - np.floor(y)
        for j in range(out_w):
            x = (j + 0.5) * w / out_w - 0.5
            x0, x1, lx = max(int(np.floor(x)), 0), min(int(np.ceil(x)), w - 1), x - np.floor(x)
            top = image[y0, x0] + (image[y0, x1] - image[y0, x0]) * lx
            bottom = image[y1, x0] + (image[y1, x1] - image[y1, x0]) * lx
            out[i, j] = top + (bottom - top) * ly
    return out


@pytest.mark.parametrize("shape,size,top,left,crop", [((7, 9), 13, 3, 8, 5), ((31, 23), 11, 2, 6, 4)])
def test_resize_crop_is_tf_bilinear_on_the_crop_window(shape, size, top, left, crop):
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    want = _tf_bilinear(image.astype(np.float64), size, size)[top:top + crop, left:left + crop]
    np.testing.assert_allclose(resize_crop(image, size, top, left, crop), want, atol=1e-3)


def test_missing_partial_and_corrupt_shards_are_named(packed, tmp_path):
    with pytest.raises(DataError, match=r"no packed ImageNet in .*prepare imagenet"):
        imagenet.load(tmp_path, stage=False)
    bad = _copy(packed["shards"], tmp_path / "truncated")
    with open(bad / "train-00001.tar", "r+b") as fh:
        fh.truncate(5000)
    with pytest.raises(DataError, match=r"train-00001.tar has 5000 bytes.*truncated.*forcerun pack_imagenet"):
        imagenet.load(bad, stage=False)
    gone = _copy(packed["shards"], tmp_path / "missing")
    (gone / "val-00001.tar").unlink()
    with pytest.raises(DataError, match=r"val-00001.tar is missing"):
        imagenet.load(gone, stage=False)
    corrupt = _copy(packed["shards"], tmp_path / "corrupt")
    row = np.load(corrupt / "train-index.npy")[0]
    with open(corrupt / f"train-{row['shard']:05d}.tar", "r+b") as fh:  # same size, garbage image bytes
        os.pwrite(fh.fileno(), b"\0" * int(row["length"]), int(row["offset"]))
    with imagenet.load(corrupt, workers=1, prefetch=0, stage=False) as ds:
        with pytest.raises(DataError, match=r"the image at byte \d+ of .*train-00000.tar does not decode"):
            ds.train_batch(np.array([1, 0]), 0)


def test_an_unclosed_dataset_does_not_hang_the_exit(packed):
    script = textwrap.dedent(f"""
        import numpy as np
        from llqr.data import imagenet
        from llqr.data.stream import BatchStream
        ds = imagenet.load({str(packed['shards'])!r}, seed=1, workers=2, prefetch=3, stage=False)
        stream = BatchStream(ds.train_size, 4, 1)
        ds.attach_stream(stream)
        x, y = ds.train_batch(stream.indices(0), 0)  # batches 1..3 are still being decoded
        print("slots", *[s.path for s in ds._pool.slot_pools])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    slots = proc.stdout.split("slots", 1)[1].split()
    assert slots and not any(os.path.exists(p) for p in slots)


def test_prepare_cli(packed, tmp_path, capsys):
    from llqr.data.prepare import main

    assert main(["imagenet", str(packed["archives"]), str(tmp_path / "out"), "--shard-size-mb", "0.05"]) == 0
    assert '"train": 12' in capsys.readouterr().out
    assert imagenet.check(tmp_path / "out", hashes=True)["counts"] == {"train": 12, "val": 6}
    assert main(["imagenet", str(tmp_path / "nowhere"), str(tmp_path / "o2")]) == 1


@pytest.mark.workflow
def test_pack_imagenet_rule(packed, tmp_path):
    proc = run_snakemake(["--cores", "2", "data/imagenet/shards/manifest.json"], tmp_path,
                         env={"IMAGENET_DIR": str(packed["archives"])})
    manifest = imagenet.check(tmp_path / "data" / "imagenet" / "shards")
    assert manifest["counts"] == {"train": 12, "val": 6} and manifest["source"]["layout"] == "archives"
    assert "pack_imagenet" in proc.stdout + proc.stderr
    assert "[pack_imagenet] done" in (tmp_path / "logs" / "data" / "pack_imagenet.log").read_text()


def test_runner_trains_on_packed_imagenet(packed, tmp_path, monkeypatch):
    """The runner end to end on the shards: prefetching worker pool, LLQR fit batches from the
    stream, eval over the whole val split, pool closed afterwards."""
    from llqr.config import build_config
    from llqr.train.loop import run

    monkeypatch.delenv("SLURM_TMPDIR", raising=False)
    data_root = tmp_path / "data"
    _copy(packed["shards"], data_root / "imagenet" / "shards")
    cfg = build_config({"dataset": "imagenet", "model": "mlp", "mlp_hidden": [4], "batch_size": 4,
                        "eval_batch_size": 5, "max_steps": 3, "precond_batch_size": 6, "precond_steps": 2,
                        "update_preconditioner_every": 2, "test_eval_freq": 2})
    summary = run(cfg, cell_id="imagenet-smoke/default/seed42", results_dir=tmp_path / "r",
                  checkpoints_dir=tmp_path / "c", data_root=data_root, out=_quiet)
    assert summary["status"] == "ok" and summary["steps"] == 3
    n_val = len(packed["images"].val)
    assert summary["final"]["value"] in {100.0 * k / n_val for k in range(n_val + 1)}
