# Snakemake `script:` for rule tune: runs (or resumes) one Optuna study, writes best.json.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from llqr.workflow.tune_job import tune_from_workflow

job = snakemake.params.job  # llqr.workflow.jobparams.JobParams, unpickled as a dict
sys.exit(tune_from_workflow(snakemake.params.spec, snakemake.output.best,
                            checkpoints_dir=job["checkpoints_dir"],
                            data_root=job["data_dir"], log_path=snakemake.log[0]))
