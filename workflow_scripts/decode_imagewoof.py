# Snakemake `script:` for rule decode_imagewoof: decode fastai's imagewoof2.tgz once into uint8 arrays
# + meta.json (llqr/data/imagewoof.py); training jobs memory-map those.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from llqr.data.errors import DataError
from llqr.data.imagewoof import decode
from llqr.workflow.joblog import job_log

with job_log(snakemake.log[0]) as (log, _log_file):
    try:
        decode(Path(snakemake.input[0]), Path(snakemake.output[0]).parent, log=log)
    except DataError as exc:
        log(f"error: {exc}")
        sys.exit(f"error: {exc}")
