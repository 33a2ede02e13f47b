"""Worker of rule report: stage x class summary table and plots from the evaluation CSVs."""
from pathlib import Path

from _worker import report

sm = snakemake  # noqa: F821  (injected by Snakemake)
report(sm, eval_csvs=dict(sm.input.items()), out_dir=str(Path(sm.output.summary).parent))
