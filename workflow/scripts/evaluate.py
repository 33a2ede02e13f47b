"""Rule evaluate: per-class IoU of one model on the target evaluation split (`proda evaluate`)."""
from proda.launch import run_step

sm = snakemake  # noqa: F821  (injected by Snakemake)
run_step("evaluate", sm.params.cfg, run_config=sm.config, log=sm.log[0], threads=sm.threads,
         checkpoint=sm.input.checkpoint, out=sm.output[0])
