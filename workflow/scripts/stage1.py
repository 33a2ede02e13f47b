"""Rule stage1: prototypical pseudo-label denoising and structure learning (`proda stage1`)."""
from proda.launch import run_step

sm = snakemake  # noqa: F821  (injected by Snakemake)
run_step("stage1", sm.params.cfg, run_config=sm.config, log=sm.log[0], threads=sm.threads,
         gpus=sm.resources.gpu, warmup=sm.input.warmup, soft=sm.input.soft,
         prototypes=sm.input.prototypes, out=sm.output.model)
