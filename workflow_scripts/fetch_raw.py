# Snakemake `script:` for rule fetch_raw: download (or copy) and verify one raw archive.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from llqr.data.errors import DataError
from llqr.data.fetch import fetch

src = snakemake.params.source
try:
    checks = {k: src.get(k) for k in ("md5", "sha256", "size", "md5_first_mib")}
    fetch(src.get("url"), Path(snakemake.output[0]), checks, src.get("local"))
except DataError as exc:
    Path(snakemake.log[0]).write_text(f"{exc}\n")
    sys.exit(f"error: {exc}")
