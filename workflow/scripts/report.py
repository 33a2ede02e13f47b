"""Rule report: a run's evaluation CSVs, summary table and plots."""
from proda.experiment import run_report

sm = snakemake  # noqa: F821  (injected by Snakemake)
run_report(dict(sm.input.items()), summary=sm.output.summary, eval_dir=sm.output.evals, log=sm.log[0])
