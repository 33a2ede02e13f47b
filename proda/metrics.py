"""Segmentation metrics of the docs/method.md §7: confusion matrix, per-class IoU and summary scores."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

from proda.data.labels import IGNORE_INDEX, MIOU13_EXCLUDED

ArrayLike = torch.Tensor | np.ndarray

# Rows of the evaluation CSV that follow the per-class rows.
SUMMARY_KEYS = ("mIoU", "mIoU-16", "mIoU-13", "pixel_acc", "mean_acc", "fwIoU")


def _as_index_tensor(x: ArrayLike, what: str) -> torch.Tensor:
    """An int64 tensor view of an integer array or tensor (clear error for anything else)."""
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"{what} must hold integer class ids, got dtype {t.dtype}")
    return t.long()


def confusion_matrix(pred: ArrayLike, gt: ArrayLike, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """C×C int64 confusion matrix (rows = ground truth, columns = prediction).

    Only pixels with ``0 <= gt < num_classes`` (and ``gt != ignore_index``) count. ``pred`` and
    ``gt`` are integer tensors or arrays of the same shape; the result lives on ``gt``'s device.
    Raises ``ValueError`` when a counted pixel has a prediction outside ``[0, num_classes)``.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    p, g = _as_index_tensor(pred, "pred"), _as_index_tensor(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred shape {tuple(p.shape)} != gt shape {tuple(g.shape)}")
    p = p.to(g.device)
    valid = (g >= 0) & (g < num_classes) & (g != ignore_index)
    p, g = p[valid], g[valid]
    if ((p < 0) | (p >= num_classes)).any():
        bad = p[(p < 0) | (p >= num_classes)][0].item()
        raise ValueError(f"prediction {bad} outside [0, {num_classes}) on a labelled pixel")
    counts = torch.bincount(g * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def _nanmean(values: np.ndarray) -> float:
    """Mean over the non-NaN entries; NaN (without a warning) when there are none."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


@dataclass(frozen=True)
class IoUTable:
    """Scores of one confusion matrix (fractions in [0, 1]; NaN where undefined)."""

    confusion: np.ndarray  # int64 [C, C], rows = ground truth
    iou: np.ndarray        # float64 [C], NaN where the class is absent from gt and pred
    miou: float
    pixel_acc: float
    mean_acc: float
    fwiou: float

    @property
    def n_class(self) -> int:
        return int(self.confusion.shape[0])

    def miou_over(self, ids: Iterable[int]) -> float:
        """Mean IoU over the given class ids, skipping NaN classes."""
        idx = np.asarray(list(ids), dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_class):
            raise ValueError(f"class ids {idx.tolist()} outside [0, {self.n_class})")
        return _nanmean(self.iou[idx])

    def to_rows(self, names: Sequence[str], n_class: int | None = None) -> list[tuple[str, float]]:
        """Rows ``(key, percent)`` of the evaluation CSV: one per class, then the summary keys.

        16-class tables also get ``mIoU-16`` and ``mIoU-13`` (without wall, fence, pole).
        """
        n_class = self.n_class if n_class is None else n_class
        if n_class != self.n_class or len(names) != n_class:
            raise ValueError(f"table has {self.n_class} classes, got n_class={n_class} "
                             f"and {len(names)} names")
        rows = [(str(name), 100.0 * float(v)) for name, v in zip(names, self.iou)]
        rows.append(("mIoU", 100.0 * self.miou))
        if n_class == 16:
            kept = [c for c in range(n_class) if c not in MIOU13_EXCLUDED]
            rows += [("mIoU-16", 100.0 * self.miou), ("mIoU-13", 100.0 * self.miou_over(kept))]
        rows += [("pixel_acc", 100.0 * self.pixel_acc), ("mean_acc", 100.0 * self.mean_acc),
                 ("fwIoU", 100.0 * self.fwiou)]
        return rows


def iou_table(confusion: ArrayLike) -> IoUTable:
    """Per-class IoU, mIoU, pixel / mean accuracy and frequency-weighted IoU (docs/method.md §7)."""
    if isinstance(confusion, torch.Tensor):
        confusion = confusion.detach().cpu().numpy()
    h = np.asarray(confusion)
    if h.ndim != 2 or h.shape[0] != h.shape[1]:
        raise ValueError(f"confusion matrix must be square 2-D, got shape {h.shape}")
    if (h < 0).any():
        raise ValueError("confusion matrix has negative counts")
    h = h.astype(np.int64)
    hf = h.astype(np.float64)
    diag, rows, cols, total = np.diag(hf), hf.sum(1), hf.sum(0), hf.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = diag / (rows + cols - diag)
        class_acc = diag / rows
        pixel_acc = float(diag.sum() / total) if total else float("nan")
        freq = rows / total if total else np.zeros_like(rows)
    seen = freq > 0
    fwiou = float((freq[seen] * iou[seen]).sum()) if total else float("nan")
    return IoUTable(confusion=h, iou=iou, miou=_nanmean(iou), pixel_acc=pixel_acc,
                    mean_acc=_nanmean(class_acc), fwiou=fwiou)


class ConfusionAccumulator:
    """Streaming confusion matrix: ``add`` batches, then ``table()``."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)

    def add(self, pred: ArrayLike, gt: ArrayLike) -> None:
        """Accumulate one batch (any matching shapes)."""
        self.confusion += confusion_matrix(pred, gt, self.num_classes, self.ignore_index).cpu()

    def table(self) -> IoUTable:
        return iou_table(self.confusion)
