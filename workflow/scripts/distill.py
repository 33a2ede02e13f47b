"""Worker of rules stage2 and stage3: self-training with distillation from the previous stage."""
from _worker import run

sm = snakemake  # noqa: F821  (injected by Snakemake)
run(sm, "distill", training=True, stage=sm.rule, teacher_ckpt=sm.input.teacher,
    hard_h5=sm.input.labels, out_ckpt=sm.output[0], state_dir=sm.params.state_dir,
    init_ckpt=sm.input.get("init"))
