"""Every rule of a registered step (proda/registry.py): its view, named inputs and main output to
the step's function, with the artifact's record."""
from proda.steps import run_rule

sm = snakemake  # noqa: F821  (injected by Snakemake)
run_rule(sm.params.step, sm.params.view, run_config=sm.config, inputs=dict(sm.input.items()),
         out=sm.output[0], log=sm.log[0], threads=sm.threads, gpus=sm.resources.get("gpu", 0))
