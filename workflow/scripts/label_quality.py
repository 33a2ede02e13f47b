"""Rule label_quality: every pseudo-label artifact of one run against the target train labels."""
from proda.experiment import run_label_quality

sm = snakemake  # noqa: F821  (injected by Snakemake)
run_label_quality(dict(sm.input.items()), sm.params.cfg, run_config=sm.config, out_csv=sm.output.csv,
                  plot=sm.output.plot, log=sm.log[0])
