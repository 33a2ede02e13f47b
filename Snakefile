"""ProDA as a Snakemake workflow: warm-up -> soft labels + prototypes -> stage 1 -> hard labels
-> stage 2 -> hard labels -> stage 3, every stage evaluated, then a report.

    snakemake --cores all                                   # the toy-city demo (config.yaml)
    snakemake --cores all --configfile config/gta5_to_cityscapes.yaml
    snakemake --cores all --profile slurm --configfile ...  # on a SLURM cluster

Every artifact lands under results_dir/experiment/ (RES); see workflow/rules/common.smk.
Config: proda/defaults.yaml <- config.yaml <- --configfile files, validated against
workflow/schemas/config.schema.yaml before any job starts. Several experiments may share one
results_dir: the toy data and every artifact whose config and upstream chain are identical are
computed once (results_dir/store/, see workflow/scripts/_worker.py). Training rules whose `gpu`
resource is raised above 1 run under torchrun (see workflow/rules/train.smk).
"""
import os
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


onsuccess:
    summary = f"{RES}/report/summary.csv"
    if os.path.exists(summary):
        from proda.report import format_summary

        print(format_summary(summary))
        print(f"Report: {summary} (plots beside it); HTML: snakemake --report {RES}/report.html")
