# Dataset preparation: each step a declared output, done once and shared by every cell. The
# outputs' names come from llqr/data/paths.py (data_paths), where the loaders look for them too.
from llqr.data.imagenet100 import CLASSES as IMAGENET100_CLASSES
from llqr.data.sources import cora_source, imagewoof_source, svhn_source


rule prepare_digits:
    output:
        str(data_paths.digits_file(data_folder("digits"))),
    log:
        "logs/data/prepare_digits.log",
    localrule: True
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/prepare_digits.py"


# The grokking task's equations, generated (no download): a + b mod p, split 60/40 by a fixed seed.
rule prepare_modular:
    output:
        str(data_paths.modular_file(data_folder("mod_sum"), "{p}")),
    log:
        "logs/data/prepare_modular_p{p}.log",
    wildcard_constraints:
        p=r"\d+",
    localrule: True
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/prepare_modular.py"


# The HyperbolicLR study's oscillator trajectories, generated (no download): three damped
# oscillators integrated by Newmark-beta (llqr/data/oscillation.py); the loader windows and splits them.
rule prepare_oscillation:
    output:
        str(data_paths.oscillation_file(data_folder("oscillation"))),
    log:
        "logs/data/prepare_oscillation.log",
    localrule: True
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/prepare_oscillation.py"


# The HyperbolicLR study's integral-operator data, generated (no download, a fixed seed): 10,000
# Gaussian random fields and their integrals (llqr/data/integral.py), split 8,000 / 2,000.
rule prepare_integral:
    output:
        str(data_paths.integral_file(data_folder("integral"))),
    log:
        "logs/data/prepare_integral.log",
    localrule: True
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/prepare_integral.py"


# The SINGD demo's Cora-like graph, generated (no download, a fixed seed): a stochastic block model of
# 294 nodes in 7 classes (llqr/data/synth_graph.py) written as the eight Planetoid files Cora's loader reads.
rule prepare_synth_graph:
    output:
        [str(data_paths.synth_graph_file(data_folder("synth_graph"), part)) for part in data_paths.CORA_PARTS],
    log:
        "logs/data/prepare_synth_graph.log",
    localrule: True
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/prepare_synth_graph.py"


rule fetch_raw:
    output:
        str(data_paths.raw_file(data_folder("{dataset}"), "{file}")),
    log:
        "logs/data/fetch_{dataset}_{file}.log",
    wildcard_constraints:
        # the archives a loader reads itself, and the raw corpora of the translation chain
        dataset="|".join((*data_paths.RAW_FILES, *TRANSLATION_CORPORA)),
    retries: 0
    localrule: True
    conda:
        CONDA_ENV
    params:
        source=lambda wc: config["data_sources"][wc.dataset],
    script:
        "../workflow_scripts/fetch_raw.py"


# SVHN's two official MATLAB files (train, test), each checked against its md5: the sources are
# llqr/data/sources.py's unless data_sources.svhn moves them (url: a base address, local: a folder).
rule fetch_svhn:
    output:
        str(data_paths.svhn_file(data_folder("svhn"), "{split}")),
    log:
        "logs/data/fetch_svhn_{split}.log",
    wildcard_constraints:
        split="|".join(data_paths.SVHN_SPLITS),
    retries: 0
    localrule: True
    conda:
        CONDA_ENV
    params:
        source=lambda wc: svhn_source(wc.split, config["data_sources"].get("svhn")),
    script:
        "../workflow_scripts/fetch_raw.py"


# Cora's eight Planetoid files (x, y, tx, ty, allx, ally, graph, test.index), each checked against its
# sha256 (llqr/data/sources.py); data_sources.cora may move them (url: a base address, local: a folder).
rule fetch_cora:
    output:
        str(data_paths.cora_file(data_folder("cora"), "{part}")),
    log:
        "logs/data/fetch_cora_{part}.log",
    wildcard_constraints:
        part="|".join(p.replace(".", r"\.") for p in data_paths.CORA_PARTS),
    retries: 0
    localrule: True
    conda:
        CONDA_ENV
    params:
        source=lambda wc: cora_source(wc.part, config["data_sources"].get("cora")),
    script:
        "../workflow_scripts/fetch_raw.py"


# ImageWoof-10: fastai's full-size imagewoof2.tgz, checked by fastai's size and first-MiB md5
# (llqr/data/sources.py; data_sources.imagewoof may set url or a local copy), decoded once to arrays.
rule fetch_imagewoof:
    output:
        str(data_paths.imagewoof_archive(data_folder("imagewoof"))),
    log:
        "logs/data/fetch_imagewoof.log",
    retries: 0
    localrule: True
    conda:
        CONDA_ENV
    params:
        source=lambda wc: imagewoof_source(config["data_sources"].get("imagewoof")),
    script:
        "../workflow_scripts/fetch_raw.py"


# ~13k JPEGs to 256x256 uint8 arrays (~2.5 GB), a few minutes on one core.
rule decode_imagewoof:
    input:
        str(data_paths.imagewoof_archive(data_folder("imagewoof"))),
    output:
        str(data_paths.imagewoof_meta(data_folder("imagewoof"))),
    log:
        "logs/data/decode_imagewoof.log",
    conda:
        CONDA_ENV
    resources:
        mem_mb=4000,
        runtime=60,
    script:
        "../workflow_scripts/decode_imagewoof.py"


rule index_imagenet:
    output:
        str(data_paths.imagenet_index(data_folder("imagenet"))),
    log:
        "logs/data/index_imagenet.log",
    localrule: True
    conda:
        CONDA_ENV
    params:
        source=lambda wc: config["data_sources"].get("imagenet", {}).get("source_dir") or os.environ.get("IMAGENET_DIR"),
    script:
        "../workflow_scripts/index_imagenet.py"


# One pass over the user's ImageNet files into ~1 GiB tar shards + index (llqr/data/imagenet_pack.py).
# Long and I/O-bound (~145 GB read and written): a cluster job, not a local rule. Training jobs copy
# the shards to $SLURM_TMPDIR themselves. Resize with --set-resources pack_imagenet:runtime=...
rule pack_imagenet:
    input:
        str(data_paths.imagenet_index(data_folder("imagenet"))),
    output:
        str(data_paths.imagenet_manifest(data_folder("imagenet"))),
    log:
        "logs/data/pack_imagenet.log",
    conda:
        CONDA_ENV
    threads: 4
    resources:
        cpus_per_task=4,
        mem_mb=4000,
        runtime=480,
    params:
        shard_size_mb=1024,
    script:
        "../workflow_scripts/pack_imagenet.py"


# ImageNet-100 (the SINGD study's ViT data): the same pass over the user's ImageNet files, keeping the
# 100 classes of llqr/data/imagenet100.py (~13 GB of shards, so a shorter job).
rule pack_imagenet100:
    input:
        str(data_paths.imagenet_index(data_folder("imagenet"))),
    output:
        str(data_paths.imagenet_manifest(data_folder("imagenet100"))),
    log:
        "logs/data/pack_imagenet100.log",
    conda:
        CONDA_ENV
    threads: 4
    resources:
        cpus_per_task=4,
        mem_mb=4000,
        runtime=120,
    params:
        shard_size_mb=1024,
        classes=list(IMAGENET100_CLASSES),
    script:
        "../workflow_scripts/pack_imagenet.py"
