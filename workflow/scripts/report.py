"""Rule report: an experiment's evaluation CSVs, summary table, plots and manifest."""
from proda.steps import experiment_report

sm = snakemake  # noqa: F821  (injected by Snakemake)
experiment_report(dict(sm.input.items()), sm.params.manifest, summary=sm.output.summary,
                  eval_dir=sm.output.evals, manifest=sm.output.manifest, log=sm.log[0])
