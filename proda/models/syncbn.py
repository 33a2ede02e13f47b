"""Synchronised BatchNorm for DistributedDataParallel, on CUDA (torch's) and CPU/gloo (ours).

PyTorch's ``nn.SyncBatchNorm`` only runs on GPUs, so CPU runs under ``torchrun`` use
:class:`GlooSyncBatchNorm`, which all-reduces the batch sums with an autograd-aware collective.
Both normalise with the statistics of the whole global batch, i.e. docs/method.md's intended
behaviour (Q12): ``(x - mean) / sqrt(var_biased + eps)``, running var from the unbiased variance.
"""
from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span every process of the default group."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        count = torch.full((1,), x.numel() / c, dtype=x.dtype, device=x.device)
        packed = torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), count])
        with warnings.catch_warnings():  # its replacement is private API; this one is differentiable
            warnings.filterwarnings("ignore", category=FutureWarning)
            packed = dist_fn.all_reduce(packed)
        total = packed[-1]
        mean = packed[:c] / total
        var = (packed[c:2 * c] / total - mean * mean).clamp_min(0)
        with torch.no_grad():
            unbiased = var * total / (total - 1).clamp_min(1)
            self.running_mean.mul_(1 - self.momentum).add_(mean.detach(), alpha=self.momentum)
            self.running_var.mul_(1 - self.momentum).add_(unbiased.detach(), alpha=self.momentum)
            self.num_batches_tracked.add_(1)
        y = (x - mean[None, :, None, None]) * torch.rsqrt(var[None, :, None, None] + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def _convert_cpu(module: nn.Module) -> nn.Module:
    """Replace BatchNorm2d by :class:`GlooSyncBatchNorm` holding the very same parameter and buffer
    tensors (as ``nn.SyncBatchNorm.convert_sync_batchnorm``), so that optimisers built before the
    conversion keep updating the model."""
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GlooSyncBatchNorm):
        new = GlooSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        new.running_mean, new.running_var = module.running_mean, module.running_var
        new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, _convert_cpu(child))
    return module


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm2d by a synchronised one suited to ``device``."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_cpu(model)
