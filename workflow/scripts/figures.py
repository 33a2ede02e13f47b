"""Rule figures: the prediction grid and the training curves of one run."""
from proda.experiment import run_figures

sm = snakemake  # noqa: F821  (injected by Snakemake)
run_figures(dict(sm.input.items()), sm.params.cfg, run_config=sm.config, grid=sm.output.grid,
            curves=sm.output.curves, log=sm.log[0])
