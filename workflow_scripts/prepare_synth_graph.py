# Snakemake `script:` for rule prepare_synth_graph: the demo's Cora-like graph as Planetoid files.
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from llqr.data import synth_graph

counts = synth_graph.prepare(Path(snakemake.output[0]).parent.parent)
assert all(Path(f).is_file() for f in snakemake.output), "prepare_synth_graph wrote fewer files than declared"
Path(snakemake.log[0]).write_text(json.dumps(counts) + "\n")
