# Snakemake `script:` for rules pack_imagenet and pack_imagenet100 (params.classes: a class subset):
# pack the user's ImageNet files (checked by index_imagenet) into tar shards + index + manifest.json, once;
# training jobs stage and read those.
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from llqr.data.errors import DataError
from llqr.data.imagenet_pack import pack
from llqr.workflow.joblog import job_log

with job_log(snakemake.log[0]) as (log, _log_file):
    source = json.loads(Path(snakemake.input[0]).read_text())["root"]
    try:
        pack(source, Path(snakemake.output[0]).parent, shard_size_mb=float(snakemake.params.shard_size_mb), log=log,
             classes=getattr(snakemake.params, "classes", None))
    except DataError as exc:
        log(f"error: {exc}")
        sys.exit(f"error: {exc}")
