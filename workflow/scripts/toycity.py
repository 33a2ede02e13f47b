"""Rule toycity: generate the toy-city benchmark (`proda toycity`)."""
from proda.launch import run_step

sm = snakemake  # noqa: F821  (injected by Snakemake)
run_step("toycity", sm.params.cfg, run_config=sm.config, log=sm.log[0], threads=sm.threads,
         out=sm.output[0])
