# One job per cell. The fully resolved run config is a param, so editing any value that
# reaches a cell makes exactly that cell stale (--rerun-triggers params). The storage folders and
# the bookkeeping keys travel in `job`, a JobParams instance: Snakemake leaves params of
# non-builtin types out of the rerun trigger (see llqr/jobparams.py), so moving checkpoints_dir
# or changing checkpoint_freq stales nothing. Checkpoints live outside the declared outputs, so a
# failed or preempted job never loses them.


rule train:
    input:
        data=train_inputs,
        tuned=tuned_input,
    output:
        summary=f"{RESULTS}/cells/{{cell}}/summary.json",
        metrics=f"{RESULTS}/cells/{{cell}}/metrics.jsonl",
        record=f"{RESULTS}/cells/{{cell}}/record.json",
    log:
        "logs/train/{cell}.log",
    conda:
        CONDA_ENV
    resources:
        **TRAIN_RESOURCES,
    params:
        config=lambda wc: cell_of(wc).config_json,
        job=lambda wc: JobParams.of(RESULTS, CHECKPOINTS, DATA, cell_of(wc).settings),
    script:
        "../workflow_scripts/train_cell.py"
