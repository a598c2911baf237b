# Dataset preparation: each step a declared output, done once and shared by every cell.


rule prepare_digits:
    output:
        f"{DATA}/digits/digits.npz",
    log:
        "logs/data/prepare_digits.log",
    localrule: True
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/prepare_digits.py"


rule fetch_raw:
    output:
        f"{DATA}/{{dataset}}/raw/{{file}}",
    wildcard_constraints:
        dataset="cifar10|cifar100|iwslt14_de_en",
    params:
        source=lambda wc: config["data_sources"][wc.dataset],
    log:
        "logs/data/fetch_{dataset}_{file}.log",
    localrule: True
    retries: 0
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/fetch_raw.py"


rule index_imagenet:
    output:
        f"{DATA}/imagenet/index.json",
    params:
        source=lambda wc: config["data_sources"].get("imagenet", {}).get("source_dir")
        or os.environ.get("IMAGENET_DIR"),
    log:
        "logs/data/index_imagenet.log",
    localrule: True
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/index_imagenet.py"
