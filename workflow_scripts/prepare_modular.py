# Snakemake `script:` for rule prepare_modular: the split modular-addition equations to p<p>.npz.
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from llqr.data import modular

counts = modular.prepare(Path(snakemake.output[0]), int(snakemake.wildcards.p))
Path(snakemake.log[0]).write_text(json.dumps(counts) + "\n")
