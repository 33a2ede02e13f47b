"""Worker of rule warmup: train the adversarial warm-up, or import warmup.checkpoint."""
from _worker import run

sm = snakemake  # noqa: F821  (injected by Snakemake)
run(sm, "warmup", training=sm.params.cfg["warmup"]["checkpoint"] is None,
    out_ckpt=sm.output[0], state_dir=sm.params.state_dir)
