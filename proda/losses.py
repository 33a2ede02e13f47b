"""Loss functions of ProDA (docs/method.md §4.0-§4.3): CE with ignore, symmetric CE, regularisers,
prototypical consistency, distillation KL and the two GAN criteria of the warm-up.

All functions take logits / distances / targets and return a scalar tensor. The masked means
(CE, RCE, symmetric CE, ``L_con``) take ``ddp``: under DistributedDataParallel a rank divides
its own sum by the count over all W ranks and multiplies by W, so that DDP's gradient averaging
gives the gradient of one mean over the global batch (as the official single-process losses)
and the ranks' values average to that mean. The plain means (MRKLD, MRENT, ``L_kd``, GAN
criteria) cover equal-sized per-rank tensors, where averaging is already exact.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from proda.data.labels import IGNORE_INDEX

RCE_PROB_MIN = 1e-7
RCE_ONEHOT_MIN = 1e-4
RCE_EPS = 1e-6
REGULARISERS = ("MRKLD", "MRENT")


def _wide(x: Tensor) -> Tensor:
    """``x`` in at least float32 (half-precision AMP outputs are widened, float64 kept)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _masked_mean(total: Tensor, count: Tensor, ddp: bool, eps: float | None = None) -> Tensor:
    """``total / max(count, 1)`` (``total / (count + eps)`` when ``eps`` is given).

    With ``ddp`` in a process group of W > 1 ranks, ``count`` is summed over the ranks first and
    the result multiplied by W (see the module docstring).
    """
    world = dist.get_world_size() if ddp and dist.is_available() and dist.is_initialized() else 1
    if world > 1:
        count = count.detach().clone()
        dist.all_reduce(count)
    mean = total / (count.clamp(min=1) if eps is None else count + eps)
    return mean * world if world > 1 else mean


def cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX,
                  ddp: bool = False) -> Tensor:
    """Mean pixel CE over non-ignored pixels (``F.cross_entropy(..., reduction='mean')``).

    Where every pixel is ignored the official code gets NaN; here the result is 0 (still
    attached to the graph, so ``backward()`` works and contributes zero gradient).
    ``ddp``: normalise by the count over every rank (module docstring).
    """
    total = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")
    return _masked_mean(total, (target != ignore_index).sum(), ddp)


def reverse_ce(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX,
               ddp: bool = False) -> Tensor:
    """Reverse CE of §4.2 step 7 with the official clamps.

    ``-(1/(|V|+1e-6)) Σ_{p∈V} Σ_k clamp(p_k, 1e-7, 1) · log(clamp(onehot_k, 1e-4, 1))``;
    ``ddp``: ``|V|`` counted over every rank (module docstring).
    """
    prob = F.softmax(_wide(logits), dim=1).clamp(RCE_PROB_MIN, 1.0)
    valid = target != ignore_index
    safe = torch.where(valid, target, torch.zeros_like(target))
    onehot = F.one_hot(safe, logits.shape[1]).movedim(-1, 1).to(prob.dtype)
    per_pixel = -(prob * onehot.clamp(RCE_ONEHOT_MIN, 1.0).log()).sum(dim=1)
    return _masked_mean((per_pixel * valid).sum(), valid.sum(), ddp, eps=RCE_EPS)


def symmetric_ce(logits: Tensor, target: Tensor, alpha: float, beta: float,
                 ignore_index: int = IGNORE_INDEX, ddp: bool = False) -> Tensor:
    """``alpha · CE + beta · RCE`` (symmetric cross-entropy, §4.2 step 7); ``ddp`` as for both."""
    return (alpha * cross_entropy(logits, target, ignore_index, ddp)
            + beta * reverse_ce(logits, target, ignore_index, ddp))


def mrkld(logits: Tensor) -> Tensor:
    """MRKLD: mean of ``-log_softmax`` over all N·C·H·W elements."""
    return -F.log_softmax(_wide(logits), dim=1).mean()


def mrent(logits: Tensor) -> Tensor:
    """MRENT: per-pixel ``Σ_k p_k log p_k`` (negative entropy), averaged over N·H·W."""
    logp = F.log_softmax(_wide(logits), dim=1)
    return (logp.exp() * logp).sum(dim=1).mean()


def regulariser(logits: Tensor, kind: str) -> Tensor:
    """The stage-1 regulariser named by ``kind`` (``MRKLD`` or ``MRENT``, case-insensitive)."""
    name = kind.upper()
    if name == "MRKLD":
        return mrkld(logits)
    if name == "MRENT":
        return mrent(logits)
    raise ValueError(f"regular_type: unknown regulariser {kind!r} (expected one of {REGULARISERS})")


def _kl_terms(teacher_prob: Tensor, student_term: Tensor) -> Tensor:
    """Elementwise ``t · (log t − s)`` with ``0 · log 0 = 0`` (as ``F.kl_div``)."""
    return torch.xlogy(teacher_prob, teacher_prob) - teacher_prob * student_term


def prototype_consistency(teacher_dist: Tensor, student_dist: Tensor, mask: Tensor,
                          temperature: float, ddp: bool = False) -> Tensor:
    """Prototypical consistency ``L_con`` of §4.2 step 8.

    ``t = softmax_k(−T·D_S)`` (teacher, treated as a constant), ``s = log_softmax_k(−T·D_g)``;
    the KL terms ``t·(log t − s)`` are summed over the valid elements of ``mask`` (broadcast
    to ``N×C×H×W``) and divided by their count (Q27), over every rank with ``ddp`` (module
    docstring). Returns 0 when nothing is valid (the official code would give NaN).
    """
    teacher = F.softmax(-temperature * _wide(teacher_dist.detach()), dim=1)
    student_log = F.log_softmax(-temperature * _wide(student_dist), dim=1)
    valid = mask.to(torch.bool).expand_as(student_log)
    terms = torch.where(valid, _kl_terms(teacher, student_log), torch.zeros_like(student_log))
    return _masked_mean(terms.sum(), valid.sum(), ddp)


def distillation_kl(student_logits: Tensor, teacher_logits: Tensor, parity: bool = False) -> Tensor:
    """Knowledge-distillation loss of §4.3 step 5, the mean over all N·C·H·W elements.

    Intended: ``t · (log t − log_softmax(student))`` (the standard KL(t‖s) terms).
    ``parity=True`` (Q2): ``t · (log t − softmax(student))``, the official bug.
    """
    teacher = F.softmax(_wide(teacher_logits.detach()), dim=1)
    student = _wide(student_logits)
    student_term = F.softmax(student, dim=1) if parity else F.log_softmax(student, dim=1)
    return _kl_terms(teacher, student_term).mean()


def lsgan_loss(d_out: Tensor, target_label: float) -> Tensor:
    """LS-GAN criterion: mean squared error of every D output cell to ``target_label``."""
    return F.mse_loss(d_out, torch.full_like(d_out, float(target_label)))


def vanilla_gan_loss(d_out: Tensor, target_label: float) -> Tensor:
    """Vanilla GAN criterion: BCE-with-logits of every D output cell to ``target_label``."""
    return F.binary_cross_entropy_with_logits(d_out, torch.full_like(d_out, float(target_label)))

