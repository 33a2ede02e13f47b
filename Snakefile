"""ProDA as a Snakemake workflow: warm-up -> soft labels + prototypes -> stage 1 -> hard labels
-> stage 2 -> hard labels -> stage 3, every stage evaluated, then a report.

    snakemake --cores all                                   # the toy-city demo (config.yaml)
    snakemake --cores all --configfile config/gta5_to_cityscapes.yaml
    snakemake --cores all --profile slurm --configfile ...  # on a SLURM cluster

Every artifact lands under results_dir/experiment/ (RES); see workflow/rules/common.smk.
"""
import sys

sys.path.insert(0, workflow.basedir)  # `proda` importable without installing it


configfile: "config.yaml"


include: "workflow/rules/common.smk"  # defaults, validation, RES, params/resources helpers


report: "workflow/report/workflow.rst"


localrules:
    all,
    report,


rule all:
    input:
        f"{RES}/report/summary.csv",
        f"{RES}/report/miou_by_stage.png",
        f"{RES}/report/per_class_iou.png",
    default_target: True


include: "workflow/rules/data.smk"
include: "workflow/rules/warmup.smk"
include: "workflow/rules/pseudo_labels.smk"
include: "workflow/rules/prototypes.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
