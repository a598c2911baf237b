"""Where each dataset's prepared files lie in its folder: the one definition the workflow's rules
(rules/data.smk, rules/iwslt.smk, rules/common.smk's train inputs) and the loaders (digits, mnist,
cifar, svhn, modular, integral, iwslt, imagenet, imagenet100, cora, synth_graph, imagewoof) both use,
so a rule's outputs are exactly what its loader reads.

A dataset's folder is ``<data_dir>/<dataset>`` (``folder``), or the run's ``dataset_dir``. Each
function takes that folder and returns a ``Path`` (a Snakemake pattern such as
``data/{corpus}`` works as the folder: the rules build their outputs with these functions).
``prepared_files`` lists what a training job reads, the inputs of its rule. Pure Python: the
Snakefile imports it (no NumPy, no JAX).
"""

from __future__ import annotations

from pathlib import Path

from ..config.families import TRANSLATION_DATASETS

RAW = "raw"  # where rule fetch_raw puts a downloaded archive: <folder>/raw/<file>
DIGITS = "digits.npz"  # rule prepare_digits (llqr.data.digits.prepare)
INTEGRAL = "integral.npz"  # rule prepare_integral (llqr.data.integral.prepare)
OSCILLATION = "oscillation.npz"  # rule prepare_oscillation (llqr.data.oscillation.prepare)
MNIST = "mnist.npz"  # fetched as is (data_sources.mnist)
CIFAR_ARCHIVES = {"cifar10": "cifar-10-binary.tar.gz", "cifar100": "cifar-100-binary.tar.gz"}  # fetched as is
# The raw archive a loader reads directly, by dataset (the workflow fetches it under this name).
RAW_FILES = {"mnist": MNIST, **CIFAR_ARCHIVES}
# SVHN's official MATLAB files, one per split (rule fetch_svhn; the unused 531k 'extra' split is not fetched)
SVHN_FILE = "{split}_32x32.mat"
SVHN_SPLITS = ("train", "test")
TRANSLATION_ARCHIVE = "iwslt14.tokenized.de-en.tar.gz"  # rule iwslt_pack
PREP_REPORT = "prep_report.json"  # rule iwslt_pack: line counts after every step
NUMERIC_CACHE = "numeric"  # rule iwslt_cache: a folder
CACHE_METADATA = "metadata.json"  # written last into the numeric cache: its presence means complete
IMAGENET_INDEX = "index.json"  # rule index_imagenet
IMAGENET_SHARDS = "shards"  # rule pack_imagenet: a folder
IMAGENET_MANIFEST = "manifest.json"  # written last into the shard folder
# Planetoid files (Cora's: rule fetch_cora; synth_graph's: rule prepare_synth_graph), read by llqr.data.cora
PLANETOID_FILE = "ind.{name}.{part}"
CORA_FILE = "ind.cora.{part}"
CORA_PARTS = ("x", "y", "tx", "ty", "allx", "ally", "graph", "test.index")
IMAGEWOOF_ARCHIVE = "imagewoof2.tgz"  # rule fetch_imagewoof: fastai's full-size archive
IMAGEWOOF_DECODED = "decoded"  # rule decode_imagewoof: a folder of .npy arrays
IMAGEWOOF_META = "meta.json"  # written last into it


def folder(data_root, dataset: str) -> Path:
    """``<data_root>/<dataset>``: where the workflow prepares ``dataset``."""
    return Path(data_root) / dataset


def digits_file(directory) -> Path:
    return Path(directory) / DIGITS


def oscillation_file(directory) -> Path:
    return Path(directory) / OSCILLATION


def modular_file(directory, p) -> Path:
    """The equations of modulus ``p`` (an int, or a wildcard such as ``"{p}"``)."""
    return Path(directory) / f"p{p}.npz"


def integral_file(directory) -> Path:
    """The integral-operator task's generated fields and integrals."""
    return Path(directory) / INTEGRAL


def raw_file(directory, name: str) -> Path:
    """A fetched archive called ``name``."""
    return Path(directory) / RAW / name


def mnist_file(directory) -> Path:
    return raw_file(directory, MNIST)


def cifar_archive(directory, dataset: str) -> Path:
    return raw_file(directory, CIFAR_ARCHIVES[dataset])


def svhn_file(directory, split: str) -> Path:
    """SVHN's ``split`` file (a split name, or the wildcard ``"{split}"``)."""
    return raw_file(directory, SVHN_FILE.format(split=split))


def translation_archive(directory) -> Path:
    return Path(directory) / TRANSLATION_ARCHIVE


def prep_report(directory) -> Path:
    return Path(directory) / PREP_REPORT


def numeric_cache(directory) -> Path:
    return Path(directory) / NUMERIC_CACHE


def cache_metadata(directory) -> Path:
    return numeric_cache(directory) / CACHE_METADATA


def imagenet_index(directory) -> Path:
    return Path(directory) / IMAGENET_INDEX


def imagenet_shards(directory) -> Path:
    return Path(directory) / IMAGENET_SHARDS


def imagenet_manifest(directory) -> Path:
    return imagenet_shards(directory) / IMAGENET_MANIFEST


def planetoid_file(directory, part: str, name: str = "cora") -> Path:
    """The Planetoid file ``part`` (one of CORA_PARTS, or the wildcard ``"{part}"``) of graph ``name``."""
    return raw_file(directory, PLANETOID_FILE.format(name=name, part=part))


def cora_file(directory, part: str) -> Path:
    """Cora's Planetoid file ``part`` (one of CORA_PARTS, or the wildcard ``"{part}"``)."""
    return planetoid_file(directory, part, "cora")


def synth_graph_file(directory, part: str) -> Path:
    """The generated demo graph's Planetoid file ``part`` (llqr.data.synth_graph)."""
    return planetoid_file(directory, part, "synth_graph")


def imagewoof_archive(directory) -> Path:
    return raw_file(directory, IMAGEWOOF_ARCHIVE)


def imagewoof_meta(directory) -> Path:
    """The decoded arrays' meta.json (``directory``: the dataset's folder, or the decoded folder itself)."""
    directory = Path(directory)
    return (directory if directory.name == IMAGEWOOF_DECODED else directory / IMAGEWOOF_DECODED) / IMAGEWOOF_META


def imagewoof_array(directory, split: str, kind: str) -> Path:
    """``{split}_{kind}.npy`` (kind x: uint8 images, y: labels) beside meta.json."""
    return imagewoof_meta(directory).parent / f"{split}_{kind}.npy"


def prepared_files(dataset: str, directory, modulus: int = 97) -> list[Path]:
    """The files a training job on ``dataset`` reads from its folder (``modulus``: mod_sum's p), in
    the form the workflow prepares them; [] for a dataset without a prepared form."""
    if dataset == "digits":
        return [digits_file(directory)]
    if dataset == "mod_sum":
        return [modular_file(directory, modulus)]
    if dataset == "integral":
        return [integral_file(directory)]
    if dataset == "oscillation":
        return [oscillation_file(directory)]
    if dataset in RAW_FILES:
        return [raw_file(directory, RAW_FILES[dataset])]
    if dataset == "svhn":
        return [svhn_file(directory, split) for split in SVHN_SPLITS]
    if dataset in TRANSLATION_DATASETS:
        return [translation_archive(directory), cache_metadata(directory)]
    if dataset in ("imagenet", "imagenet100"):
        return [imagenet_manifest(directory)]
    if dataset == "cora":
        return [cora_file(directory, part) for part in CORA_PARTS]
    if dataset == "synth_graph":
        return [synth_graph_file(directory, part) for part in CORA_PARTS]
    if dataset == "imagewoof":
        return [imagewoof_meta(directory)]
    return []
