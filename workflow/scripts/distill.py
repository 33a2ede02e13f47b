"""Rule distill: stage 2 or stage 3, self-training with distillation (`proda stage2|stage3`)."""
from proda.launch import run_step

sm = snakemake  # noqa: F821  (injected by Snakemake)
run_step(sm.params.stage, sm.params.cfg, run_config=sm.config, log=sm.log[0], threads=sm.threads,
         gpus=sm.resources.gpu, teacher=sm.input.teacher, labels=sm.input.labels,
         init=sm.input.get("init"), out=sm.output.model)
