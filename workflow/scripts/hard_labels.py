"""Worker of rule hard_labels: flip-averaged hard pseudo labels + confidences (HDF5); with
hard_labels.save_png also label/colour PNGs beside it (a by-product for looking, not an output)."""
from _worker import run

sm = snakemake  # noqa: F821  (injected by Snakemake)
run(sm, "hard_labels", checkpoint=sm.input.checkpoint, out_h5=sm.output[0])
