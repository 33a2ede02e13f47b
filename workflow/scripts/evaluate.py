"""Worker of rule evaluate: per-class IoU of one stage's model on the target split (CSV)."""
from _worker import run

sm = snakemake  # noqa: F821  (injected by Snakemake)
run(sm, "evaluate", checkpoint=sm.input.checkpoint, out_csv=sm.output[0])
