"""Rule manifest: the run folders and artifacts one run uses (what `proda prune` keeps)."""
from proda.experiment import run_manifest

sm = snakemake  # noqa: F821  (injected by Snakemake)
run_manifest(sm.params.manifest, sm.output[0], log=sm.log[0])
