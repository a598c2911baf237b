# Snakemake `script:` for rule prepare_oscillation: the study's oscillator trajectories to oscillation.npz.
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from llqr.data import oscillation

counts = oscillation.prepare(Path(snakemake.output[0]))
Path(snakemake.log[0]).write_text(json.dumps(counts) + "\n")
