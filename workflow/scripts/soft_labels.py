"""Rule soft_labels: warm-up softmax maps of the target train split (`proda soft-labels`)."""
from proda.launch import run_step

sm = snakemake  # noqa: F821  (injected by Snakemake)
run_step("soft-labels", sm.params.cfg, run_config=sm.config, log=sm.log[0], threads=sm.threads,
         checkpoint=sm.input.checkpoint, out=sm.output[0])
