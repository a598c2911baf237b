# One job per cell. The fully resolved run config is a param, so editing any value that
# reaches a cell makes exactly that cell stale (--rerun-triggers params). Checkpoints live
# outside the declared outputs, so a failed or preempted job never loses them.


rule train:
    input:
        data=train_inputs,
        tuned=tuned_input,
    output:
        summary=f"{RESULTS}/cells/{{cell}}/summary.json",
        metrics=f"{RESULTS}/cells/{{cell}}/metrics.jsonl",
        record=f"{RESULTS}/cells/{{cell}}/record.json",
    params:
        config=lambda wc: cell_of(wc).config_json,
        results_dir=RESULTS,
        checkpoints_dir=CHECKPOINTS,
        data_root=DATA,
    log:
        "logs/train/{cell}.log",
    resources:
        **TRAIN_RESOURCES,
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/train_cell.py"
