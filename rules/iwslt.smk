# IWSLT14 de-en preparation (fairseq's prepare-iwslt14.sh as rules): raw archive -> extracted members
# -> Moses-tokenized -> cleaned + lowercased -> train/valid/test -> joint BPE -> packed archive.
# Every step is one declared output set under {DATA}/{corpus}/; llqr/data/iwslt_prep.py does the work.
# {corpus} is the real IWSLT14 archive or the demo's synthetic one (same layout, same chain).
from llqr.data.iwslt_prep import LANGS, SPLITS, XML_SETS, members
from llqr.data.iwslt_cache import cache_files

IWSLT = str(data_folder("{corpus}"))
# the files the training jobs read, named in llqr/data/paths.py (data_paths) for the loader too
IWSLT_ARCHIVE = str(data_paths.translation_archive(IWSLT))
IWSLT_REPORT = str(data_paths.prep_report(IWSLT))


_SPLIT_FILES = [f"{s}.{lang}" for s in SPLITS for lang in LANGS]


rule iwslt_extract:
    input:
        lambda wc: raw_archive(wc.corpus),
    output:
        [f"{IWSLT}/extracted/{name}" for name in members()],
    log:
        "logs/data/{corpus}/iwslt_extract.log",
    localrule: True
    conda:
        CONDA_ENV
    params:
        step="extract",
    script:
        "../workflow_scripts/iwslt_prep.py"


# Filters the train tag lines and Moses-tokenizes them and the five evaluation XMLs of one language.
rule iwslt_tokenize:
    input:
        train=f"{IWSLT}/extracted/train.tags.de-en.{{lang}}",
        xml=[f"{IWSLT}/extracted/IWSLT14.{name}.de-en.{{lang}}.xml" for name in XML_SETS],
    output:
        train=f"{IWSLT}/tok/train.tags.{{lang}}",
        xml=[f"{IWSLT}/tok/{name}.{{lang}}" for name in XML_SETS],
    log:
        "logs/data/{corpus}/iwslt_tokenize_{lang}.log",
    conda:
        CONDA_ENV
    threads: 8
    resources:
        cpus_per_task=8,
        mem_mb=4000,
        runtime=60,
    params:
        step="tokenize",
    script:
        "../workflow_scripts/iwslt_prep.py"


rule iwslt_clean:
    input:
        **{lang: f"{IWSLT}/tok/train.tags.{lang}" for lang in LANGS},
    output:
        **{lang: f"{IWSLT}/clean/train.tags.{lang}" for lang in LANGS},
    log:
        "logs/data/{corpus}/iwslt_clean.log",
    localrule: True
    conda:
        CONDA_ENV
    params:
        step="clean",
    script:
        "../workflow_scripts/iwslt_prep.py"


rule iwslt_split:
    input:
        **{lang: f"{IWSLT}/clean/train.tags.{lang}" for lang in LANGS},
        **{f"test_{lang}": [f"{IWSLT}/tok/{name}.{lang}" for name in XML_SETS] for lang in LANGS},
    output:
        [f"{IWSLT}/splits/{name}" for name in _SPLIT_FILES],
    log:
        "logs/data/{corpus}/iwslt_split.log",
    localrule: True
    conda:
        CONDA_ENV
    params:
        step="split",
    script:
        "../workflow_scripts/iwslt_prep.py"


rule iwslt_bpe:
    input:
        [f"{IWSLT}/splits/{name}" for name in _SPLIT_FILES],
    output:
        [f"{IWSLT}/bpe/{name}" for name in _SPLIT_FILES + ["code"]],
    log:
        "logs/data/{corpus}/iwslt_bpe.log",
    conda:
        CONDA_ENV
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        step="bpe",
        merges=bpe_merges,
    script:
        "../workflow_scripts/iwslt_prep.py"


# The packed archive the training jobs extract, plus line counts after every step.
rule iwslt_pack:
    input:
        bpe=[f"{IWSLT}/bpe/{name}" for name in _SPLIT_FILES + ["code"]],
        extracted=[f"{IWSLT}/extracted/train.tags.de-en.{lang}" for lang in LANGS],
        tok=[f"{IWSLT}/tok/train.tags.{lang}" for lang in LANGS],
        tok_test=[f"{IWSLT}/tok/{name}.{lang}" for name in XML_SETS for lang in LANGS],
        clean=[f"{IWSLT}/clean/train.tags.{lang}" for lang in LANGS],
        splits=[f"{IWSLT}/splits/{name}" for name in _SPLIT_FILES],
    output:
        archive=IWSLT_ARCHIVE,
        report=IWSLT_REPORT,
    log:
        "logs/data/{corpus}/iwslt_pack.log",
    localrule: True
    conda:
        CONDA_ENV
    params:
        step="pack",
    script:
        "../workflow_scripts/iwslt_prep.py"


# The numeric cache (dictionaries, token ids and offsets) the training jobs load: built once per
# archive as a declared output, never as a side effect of the first training job.
rule iwslt_cache:
    input:
        IWSLT_ARCHIVE,
    output:
        [str(data_paths.numeric_cache(IWSLT) / name) for name in cache_files()],
    log:
        "logs/data/{corpus}/iwslt_cache.log",
    localrule: True
    conda:
        CONDA_ENV
    params:
        step="cache",
    script:
        "../workflow_scripts/iwslt_prep.py"
