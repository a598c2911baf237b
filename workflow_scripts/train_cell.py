# Snakemake `script:` for rule train: hands the cell's resolved config to llqr.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from llqr.workflow.train_job import train_from_workflow

job = snakemake.params.job  # llqr.workflow.jobparams.JobParams, unpickled as a dict
status = train_from_workflow(
    snakemake.params.config,
    snakemake.wildcards.cell,
    results_dir=job["results_dir"],
    checkpoints_dir=job["checkpoints_dir"],
    data_root=job["data_dir"],
    log_path=snakemake.log[0],
    tuned=snakemake.input.tuned[0] if snakemake.input.tuned else None,
    settings=job["settings"],
)
sys.exit(status)
