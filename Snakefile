"""ProDA as a Snakemake workflow: warm-up -> soft labels + prototypes -> stage 1 -> hard labels
-> stage 2 -> hard labels -> stage 3, every stage evaluated, then a report per experiment.

    snakemake --cores all                                              # the toy-city demo (config.yaml)
    snakemake --cores all --configfile config/gta5_to_cityscapes.yaml  # a paper preset instead
    snakemake --cores all --profile slurm --configfile ...             # on a SLURM cluster

Config: the defaults of proda/config.schema.yaml <- config.yaml (only when no --configfile is
given) <- each --configfile, merged and checked once, here, before any job (proda.config.resolve).
Artifacts live under results_dir/runs/ in folders named by their provenance (proda/plan.py);
results_dir/<experiment>/ holds the experiment's evaluation CSVs, report and manifest.
"""

import sys

sys.path.insert(0, workflow.basedir)  # `proda` importable without installing it

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

from proda.config import ConfigError, resolve
from proda.plan import study

min_version("9.0")


if not workflow.overwrite_configfiles:  # the toy default, beside this file

    configfile: f"{workflow.basedir}/config.yaml"


try:  # the run's one merge (defaults <- config files) and one validation
    CONFIG = resolve(config)
except ConfigError as err:
    raise WorkflowError(f"Invalid configuration: {err}") from None
# jobs read the execution-only settings (device, workers, logging) from Snakemake's config
config.update(CONFIG)
# every artifact: its folder, its inputs by role and the config view that names it; each rule's
# params are its job's view (STUDY.view_of), so a changed value reruns what depends on it
STUDY = study(CONFIG)


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/warmup.smk"
include: "workflow/rules/pseudo_labels.smk"
include: "workflow/rules/prototypes.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/predict.smk"


report: "workflow/report/workflow.rst"


localrules:
    all,
    manifest,
    report,


rule all:
    default_target: True
    input:
        final_targets(),
        predict_targets(),


onsuccess:
    print_summaries()
