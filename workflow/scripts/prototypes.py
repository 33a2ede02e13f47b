"""Worker of rule prototypes: initial class prototypes from the warm-up model (HDF5)."""
from _worker import run

sm = snakemake  # noqa: F821  (injected by Snakemake)
run(sm, "prototypes", checkpoint=sm.input.checkpoint, out_h5=sm.output[0])
