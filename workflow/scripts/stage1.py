"""Worker of rule stage1: prototypical pseudo-label denoising + structure learning."""
from _worker import run

sm = snakemake  # noqa: F821  (injected by Snakemake)
run(sm, "stage1", training=True, warmup_ckpt=sm.input.warmup, soft_h5=sm.input.soft,
    prototypes_h5=sm.input.prototypes, out_ckpt=sm.output[0], state_dir=sm.params.state_dir)
