"""Rule warmup: train the adversarial warm-up, or import warmup.checkpoint (`proda warmup`)."""
from proda.launch import run_step

sm = snakemake  # noqa: F821  (injected by Snakemake)
run_step("warmup", sm.params.cfg, run_config=sm.config, log=sm.log[0], threads=sm.threads,
         gpus=sm.resources.gpu, out=sm.output.model)
