# Snakemake `script:` for rule prepare_integral: the integral-operator fields and integrals to integral.npz.
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from llqr.data import integral

counts = integral.prepare(Path(snakemake.output[0]))
Path(snakemake.log[0]).write_text(json.dumps(counts) + "\n")
