"""Optimisers and the poly learning-rate schedule of the official code (docs/method.md §5.1, §1.6, Q1)."""
from __future__ import annotations

import warnings
from typing import Iterable, Sequence

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from proda.models.checkpoint import unwrap


class SequentialSGD(Optimizer):
    """SGD (momentum, weight decay, no Nesterov/dampening) that applies one update per list entry.

    A parameter listed k times in a group is updated k times per step, in list order, sharing one
    momentum buffer: the semantics of PyTorch 1.x SGD on the official duplicate-yielding parameter
    generator (docs/method.md Q1, parity mode). Without duplicates it equals ``torch.optim.SGD``.
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0):
        with warnings.catch_warnings():  # the duplicates are the point (Q1)
            warnings.filterwarnings("ignore", message=".*duplicate parameters.*")
            super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102
        for group in self.param_groups:
            lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad.add(p, alpha=wd) if wd else p.grad
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = d_p.clone()
                else:
                    buf.mul_(mom).add_(d_p)
                p.add_(buf, alpha=-lr)
        return None


def make_sgd(groups: Sequence[dict], *, momentum: float, weight_decay: float, parity: bool) -> Optimizer:
    """SGD over parameter groups; ``parity`` keeps duplicate entries with sequential updates (Q1)."""
    if parity:
        return SequentialSGD(groups, lr=groups[0]["lr"], momentum=momentum, weight_decay=weight_decay)
    return torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=momentum, weight_decay=weight_decay)


def finetune_groups(model: nn.Module, lr: float, head_lr_mult: float, parity: bool) -> list[dict]:
    """The 1x backbone / 10x head groups of the warm-up and ``--finetune`` stages (docs/method.md §1.6)."""
    base = unwrap(model)
    backbone = [p for p in base.backbone_parameters(parity=parity) if p.requires_grad]
    head = [p for p in base.head_parameters() if p.requires_grad]
    return [{"params": backbone, "lr": lr}, {"params": head, "lr": lr * head_lr_mult}]


def single_group(model: nn.Module, lr: float) -> list[dict]:
    """Every parameter once at the base lr (stage 1)."""
    return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]


def poly_schedule(optimizer: Optimizer, max_iter: int, power: float = 0.9) -> LambdaLR:
    """lr = base_lr * max(0, 1 - k / max_iter) ** power, k = number of scheduler steps taken."""
    return LambdaLR(optimizer, lambda k: max(0.0, 1.0 - k / max_iter) ** power)


def schedule_length(iterations: int, train_iters: int, parity: bool) -> int:
    """Poly-schedule length: the run's own length, or the official fixed ``train_iters`` (parity, Q14)."""
    return train_iters if parity else iterations
