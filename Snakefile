# llqr-workflow: the LLQR papers' results as dependency-tracked targets.
#   snakemake --cores all                                      -> the demo tour (default)
#   snakemake --cores all demo_extra                           -> every other demo surface
#   snakemake -n paper --configfile config/paper.yaml          -> preview the paper matrix
#   snakemake --profile profiles/slurm paper --configfile config/paper.yaml
import os
import sys

from snakemake.utils import min_version

min_version("9.0")
sys.path.insert(0, workflow.basedir)  # `llqr` importable even without `pip install -e .`


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/iwslt.smk"
include: "rules/tune.smk"
include: "rules/train.smk"
include: "rules/aggregate.smk"


rule all:
    default_target: True
    input:
        surface_targets("demo"),


rule demo:
    input:
        surface_targets("demo"),


# A small version of every other family (companion studies, translation, exact vs relaxed, ...).
rule demo_extra:
    input:
        surface_targets("demo_extra"),


rule paper:
    input:
        lambda wc: surface_targets("paper", required=True),


# The companion optimizer studies: all of them, or one study's surfaces.
rule studies:
    input:
        lambda wc: surface_targets("studies", required=True),


# The SDE/SVAG study (SVAG, linear scaling rule, noisy gradient descent).
rule svag_study:
    input:
        lambda wc: surface_targets("svag_study", required=True),


rule singd_study:
    input:
        lambda wc: surface_targets("singd_study", required=True),


rule hlr_study:
    input:
        lambda wc: surface_targets("hlr_study", required=True),
