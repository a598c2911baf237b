# Snakemake `script:` for rule prepare_digits: export scikit-learn's digits to digits.npz.
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from llqr.data import digits

counts = digits.prepare(Path(snakemake.output[0]))
Path(snakemake.log[0]).write_text(json.dumps(counts) + "\n")
