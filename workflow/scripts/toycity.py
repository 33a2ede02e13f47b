"""Worker of rule toycity: generate the toy-city benchmark (GTA5 + Cityscapes layouts)."""
from _worker import run

sm = snakemake  # noqa: F821  (injected by Snakemake)
run(sm, "toycity", out_dir=sm.output[0])
