"""Training: the shared loop and the warm-up, stage-1 and distillation stages."""
