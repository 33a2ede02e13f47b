"""Rule hard_labels: flip-averaged hard pseudo labels and confidences (`proda hard-labels`)."""
from proda.launch import run_step

sm = snakemake  # noqa: F821  (injected by Snakemake)
run_step("hard-labels", sm.params.cfg, run_config=sm.config, log=sm.log[0], threads=sm.threads,
         checkpoint=sm.input.checkpoint, out=sm.output[0])
