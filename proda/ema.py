"""Exponential moving average ("mean teacher") of the student, as in stage 1 (§4.2 step 11).

Parameters follow ``θ_E ← m·θ_E + (1−m)·θ_G``; every buffer (BN running mean/var,
``num_batches_tracked``) is copied from the student.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from proda.models.checkpoint import unwrap
from proda.models.syncbn import convert_sync_batchnorm


def make_ema(model: nn.Module, sync_bn: torch.device | None = None) -> nn.Module:
    """An exact deep copy of the (unwrapped) student with gradients disabled.

    The copy keeps the student's train/eval mode (the official EMA stays in train mode, Q5).
    ``sync_bn`` (the device, under DDP): its BatchNorms become synchronised ones, so that in train
    mode they normalise with the statistics of the global batch, as the official teacher does with
    the whole batch of 4; parameter and buffer names stay those of the student.
    """
    ema = copy.deepcopy(unwrap(model))
    if sync_bn is not None:
        ema = convert_sync_batchnorm(ema, sync_bn)
    for param in ema.parameters():
        param.requires_grad_(False)
    return ema


@torch.no_grad()
def ema_update(ema_model: nn.Module, model: nn.Module, momentum: float = 0.999) -> None:
    """In place: ``θ_E ← m·θ_E + (1−m)·θ_G`` for every parameter; buffers copied."""
    ema_model, model = unwrap(ema_model), unwrap(model)
    ema_named, named = list(ema_model.named_parameters()), list(model.named_parameters())
    if [k for k, _ in ema_named] != [k for k, _ in named]:
        raise ValueError("ema_update: the EMA model and the student have different parameters")
    ema_params = [p for _, p in ema_named]
    params = [p.detach() for _, p in named]
    if ema_params:
        torch._foreach_mul_(ema_params, momentum)
        torch._foreach_add_(ema_params, params, alpha=1.0 - momentum)
    ema_bufs, bufs = list(ema_model.named_buffers()), list(model.named_buffers())
    if [k for k, _ in ema_bufs] != [k for k, _ in bufs]:
        raise ValueError("ema_update: the EMA model and the student have different buffers")
    for (_, target), (_, source) in zip(ema_bufs, bufs):
        target.copy_(source)
