"""Rule prototypes: initial class prototypes from the warm-up model (`proda prototypes`)."""
from proda.launch import run_step

sm = snakemake  # noqa: F821  (injected by Snakemake)
run_step("prototypes", sm.params.cfg, run_config=sm.config, log=sm.log[0], threads=sm.threads,
         checkpoint=sm.input.checkpoint, out=sm.output[0])
