# Snakemake `script:` for rule index_imagenet: check the user's ImageNet inputs, write an index.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from llqr.data.errors import DataError
from llqr.data.imagenet_index import index
from llqr.train.records import write_json_atomic

try:
    write_json_atomic(Path(snakemake.output[0]), index(snakemake.params.source))
except DataError as exc:
    Path(snakemake.log[0]).write_text(f"{exc}\n")
    sys.exit(f"error: {exc}")
