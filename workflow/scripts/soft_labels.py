"""Worker of rule soft_labels: warm-up softmax maps of the target train split (HDF5)."""
from _worker import run

sm = snakemake  # noqa: F821  (injected by Snakemake)
run(sm, "soft_labels", checkpoint=sm.input.checkpoint, out_h5=sm.output[0])
