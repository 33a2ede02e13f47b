"""Rule study_report: mean and std over seeds, the bounds, the ablations and the label quality."""
from proda.experiment import run_study_report

sm = snakemake  # noqa: F821  (injected by Snakemake)
run_study_report(dict(sm.input.items()), dict(sm.output.items()), sm.params.layout, log=sm.log[0])
