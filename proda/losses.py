"""Loss functions of ProDA (reference §4.0-§4.3): CE with ignore, symmetric CE, regularisers,
prototypical consistency, distillation KL and the two GAN criteria of the warm-up.

All functions are pure: they take logits / distances / targets and return a scalar tensor.
"""
from __future__ import annotations

import torch
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


def cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Mean pixel CE over non-ignored pixels (``F.cross_entropy(..., reduction='mean')``).

    Where every pixel is ignored the official code gets NaN; here the result is 0 (still
    attached to the graph, so ``backward()`` works and contributes zero gradient).
    """
    total = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")
    count = (target != ignore_index).sum().clamp(min=1)
    return total / count


def reverse_ce(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Reverse CE of §4.2 step 7 with the official clamps.

    ``-(1/(|V|+1e-6)) Σ_{p∈V} Σ_k clamp(p_k, 1e-7, 1) · log(clamp(onehot_k, 1e-4, 1))``.
    """
    prob = F.softmax(_wide(logits), dim=1).clamp(RCE_PROB_MIN, 1.0)
    valid = target != ignore_index
    safe = torch.where(valid, target, torch.zeros_like(target))
    onehot = F.one_hot(safe, logits.shape[1]).movedim(-1, 1).to(prob.dtype)
    per_pixel = -(prob * onehot.clamp(RCE_ONEHOT_MIN, 1.0).log()).sum(dim=1)
    return (per_pixel * valid).sum() / (valid.sum() + RCE_EPS)


def symmetric_ce(logits: Tensor, target: Tensor, alpha: float, beta: float,
                 ignore_index: int = IGNORE_INDEX) -> Tensor:
    """``alpha · CE + beta · RCE`` (symmetric cross-entropy, §4.2 step 7)."""
    return (alpha * cross_entropy(logits, target, ignore_index)
            + beta * reverse_ce(logits, target, ignore_index))


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
                          temperature: float) -> Tensor:
    """Prototypical consistency ``L_con`` of §4.2 step 8.

    ``t = softmax_k(−T·D_S)`` (teacher, treated as a constant), ``s = log_softmax_k(−T·D_g)``;
    the KL terms ``t·(log t − s)`` are summed over the valid elements of ``mask`` (broadcast
    to ``N×C×H×W``) and divided by their count (Q27). Returns 0 when nothing is valid
    (the official code would give NaN).
    """
    teacher = F.softmax(-temperature * _wide(teacher_dist.detach()), dim=1)
    student_log = F.log_softmax(-temperature * _wide(student_dist), dim=1)
    valid = mask.to(torch.bool).expand_as(student_log)
    terms = torch.where(valid, _kl_terms(teacher, student_log), torch.zeros_like(student_log))
    return terms.sum() / valid.sum().clamp(min=1)


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

