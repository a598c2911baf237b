# One job per tuning study (a surface's `tune` block): an Optuna TPE study at the tuning budget
# whose best parameters every tuned cell of that position applies. The SQLite storage beside
# best.json is not an output, so a killed study resumes (--rerun-incomplete) instead of
# restarting; the study spec is a param, so editing a search space re-runs only that study.


rule tune:
    input:
        study_inputs,
    output:
        best=f"{RESULTS}/tuning/{{study}}/best.json",
    log:
        "logs/tune/{study}.log",
    conda:
        CONDA_ENV
    resources:
        **TUNE_RESOURCES,
    params:
        spec=lambda wc: study_of(wc).spec_json,
        job=JobParams.of(RESULTS, CHECKPOINTS, DATA),  # not a rerun trigger (llqr/jobparams.py)
    script:
        "../workflow_scripts/tune_study.py"
