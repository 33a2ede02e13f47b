"""Pseudo-label quality against target-train ground truth (docs/method.md §4.2 step 5, §6).

Every pseudo-label artifact of the pipeline is scored the same way (:func:`label_quality`): over
the pixels it **keeps** (label ≠ 250) that have ground truth, the mIoU and pixel accuracy (%) of
the label against the ground truth (proda.metrics, §7), and the kept share (%) of the labelled
pixels. The artifacts:

* :func:`soft_label_quality`: the arg-max of the warm-up soft labels (§6.1), every pixel kept;
* :func:`rectified_label_quality`: what stage 1 trains on, the prototype-rectified labels
  (§4.2 step 5) on full images;
* :func:`hard_label_quality`: the thresholded hard labels of stages 2 and 3 (§6.2).
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from proda.data.labels import IGNORE_INDEX
from proda.files import atomic_path
from proda.metrics import confusion_matrix, iou_table
from proda.prototypes import rectification_weights, rectify_pseudo_labels
from proda.pseudo_labels import HardLabelStore, SoftLabelStore
from proda.report import save_figure
from proda.runtime import resolve_device
from proda.resize import up

PathLike = str | os.PathLike
ArrayLike = Tensor | np.ndarray
QUALITY_KEYS = ("miou", "pixel_acc", "kept_fraction")
QUALITY_COLUMNS = ("artifact",) + QUALITY_KEYS
RESOLUTIONS = ("feat", "quarter")


def _as_long(x: ArrayLike) -> Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if not isinstance(t, Tensor):
        raise TypeError(f"labels must be tensors or numpy arrays, got {type(x).__name__}")
    return t.long()


class QualityAccumulator:
    """Streaming :func:`label_quality`: ``add`` label maps, then ``result()``."""

    def __init__(self, n_class: int, ignore: int = IGNORE_INDEX) -> None:
        self.n_class, self.ignore = n_class, ignore
        self.confusion = torch.zeros(n_class, n_class, dtype=torch.long)
        self.kept = 0
        self.labelled = 0

    def add(self, pred: ArrayLike, gt: ArrayLike) -> None:
        """Accumulate one map or batch (``pred`` and ``gt`` of the same shape)."""
        p, g = _as_long(pred), _as_long(gt)
        if p.shape != g.shape:
            raise ValueError(f"pseudo label {tuple(p.shape)} and ground truth {tuple(g.shape)} "
                             f"differ in shape")
        p = p.to(g.device)
        labelled = (g >= 0) & (g < self.n_class) & (g != self.ignore)
        kept = labelled & (p != self.ignore)
        self.labelled += int(labelled.sum())
        self.kept += int(kept.sum())
        g_kept = torch.where(kept, g, torch.full_like(g, self.ignore))
        self.confusion += confusion_matrix(p, g_kept, self.n_class, self.ignore).cpu()

    def result(self) -> dict[str, float]:
        """``{"miou", "pixel_acc", "kept_fraction"}`` in percent (NaN where undefined)."""
        table = iou_table(self.confusion)
        kept = 100.0 * self.kept / self.labelled if self.labelled else math.nan
        return {"miou": 100.0 * table.miou, "pixel_acc": 100.0 * table.pixel_acc,
                "kept_fraction": kept}


def label_quality(pred: ArrayLike | Iterable[ArrayLike], gt: ArrayLike | Iterable[ArrayLike],
                  n_class: int, ignore: int = IGNORE_INDEX) -> dict[str, float]:
    """Quality (%) of pseudo labels ``pred`` against ground truth ``gt``.

    ``pred``/``gt``: arrays or tensors of one shape (``N×H×W`` or ``H×W``), or two iterables of
    per-image maps (accumulated image by image). ``miou`` and ``pixel_acc`` count the kept pixels
    (``pred ≠ ignore``) with ground truth (``0 ≤ gt < n_class``, ``gt ≠ ignore``);
    ``kept_fraction`` = kept labelled pixels / labelled pixels.
    """
    acc = QualityAccumulator(n_class, ignore)
    single = isinstance(pred, (np.ndarray, Tensor))
    if single != isinstance(gt, (np.ndarray, Tensor)):
        raise TypeError("pred and gt must both be arrays/tensors or both iterables of them")
    if single:
        acc.add(pred, gt)
    else:
        for p, g in zip(pred, gt, strict=True):
            acc.add(p, g)
    return acc.result()


# ----------------------------------------------------------------------------- artifacts
def _check_n_class(dataset: Dataset, n_class: int, what: str) -> None:
    have = getattr(dataset, "n_class", n_class)
    if have != n_class:
        raise ValueError(f"{what} has {n_class} classes but the dataset maps labels to {have}")


def _labels(dataset: Dataset, progress: bool, desc: str) -> Iterator[tuple[str, Tensor]]:
    """``(name, int64 H×W label)`` per item; reads only the label file when the dataset can."""
    fast = callable(getattr(dataset, "load_label", None)) and hasattr(dataset, "samples")
    for i in tqdm(range(len(dataset)), desc=desc, unit="img", disable=not progress):
        if fast:
            yield str(dataset.samples[i].name), torch.from_numpy(dataset.load_label(i).astype(np.int64))
        else:
            item = dataset[i]
            yield str(item["name"]), torch.as_tensor(item["label"]).long()


def soft_label_quality(store: SoftLabelStore, dataset: Dataset, *, device: str = "cpu",
                       progress: bool = True) -> dict[str, float]:
    """:func:`label_quality` of the arg-max of the soft labels (§6.1): the probabilities upsampled
    bilinearly (align_corners=True) to the label size, then the arg-max; every pixel kept."""
    _check_n_class(dataset, store.n_class, f"soft-label store {store.path}")
    dev = resolve_device(device)
    acc = QualityAccumulator(store.n_class)
    for name, label in _labels(dataset, progress, "soft-label quality"):
        q = store.get(name).to(dev)[None]
        acc.add(up(q, label.shape[-2:]).argmax(dim=1)[0], label.to(dev))
    return acc.result()


def hard_label_quality(store: HardLabelStore, dataset: Dataset, threshold: float, *,
                       progress: bool = True) -> dict[str, float]:
    """:func:`label_quality` of the hard labels (§6.2) as stages 2/3 read them:
    ``store.get(name, threshold)`` (250 where the confidence is at or below ``threshold``)."""
    _check_n_class(dataset, store.n_class, f"hard-label store {store.path}")
    store.check_threshold(threshold)
    acc = QualityAccumulator(store.n_class)
    for name, label in _labels(dataset, progress, "hard-label quality"):
        pseudo = store.get(name, threshold)
        if pseudo.shape != tuple(label.shape):
            raise ValueError(f"hard label of {name!r} in {store.path} is {pseudo.shape[1]}x"
                             f"{pseudo.shape[0]} but its ground truth is {label.shape[1]}x"
                             f"{label.shape[0]}")
        acc.add(pseudo, label)
    return acc.result()


def rectified_label_quality(model: nn.Module, prototypes: Tensor, soft_store: SoftLabelStore,
                            dataset: Dataset, temperature: float, threshold: float = 0.0,
                            device: str | torch.device = "cpu", train_mode: bool = True, *,
                            batch_size: int = 4, resolution: str = "feat", num_workers: int = 0,
                            seed: int = 0, progress: bool = True) -> dict[str, float]:
    """:func:`label_quality` of the prototype-rectified pseudo labels stage 1 trains on (§4.2
    step 5), computed on full images.

    ``model`` (the teacher: the warm-up model, or a stage-1 model) runs without gradients on
    batches of ``batch_size`` full images (the official EMA forward takes the 4 full images of a
    training batch); ``train_mode`` runs it in train mode as the official EMA teacher does (Q5:
    batch-statistics BN, active dropout on ``feat``), else in eval mode. Its train/eval mode and
    buffers (BN running statistics) are restored afterwards; the train-mode dropout masks are
    drawn from ``seed`` (the global RNG state is left as it was), so the measurement repeats
    exactly. ``feat`` and the soft labels ``q`` are resized (bilinear, align_corners=True) to the
    ``resolution``: ``"feat"`` (the native feature size) or ``"quarter"`` (image size / 4, as
    stage 1 does); then ``ω = rectification_weights(feat, prototypes, temperature)``, labels =
    ``rectify_pseudo_labels(q, ω, threshold)``, nearest-upsampled to the label size.
    ``prototypes`` (C×D): the initial ones (``proda.prototypes.load_prototypes(path)[0]``) or a
    stage-1 checkpoint's final ones (:func:`checkpoint_prototypes`).
    """
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
    n_class = soft_store.n_class
    _check_n_class(dataset, n_class, f"soft-label store {soft_store.path}")
    if prototypes.dim() != 2 or prototypes.shape[0] != n_class:
        raise ValueError(f"prototypes {tuple(prototypes.shape)} must be C×D with C={n_class} "
                         f"(the soft labels' classes)")
    dev = resolve_device(device)
    model.to(dev)
    protos = prototypes.detach().to(dev, torch.float32)
    acc = QualityAccumulator(n_class)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    was_training = model.training
    saved = [b.detach().clone() for b in model.buffers()]
    try:
        model.train(train_mode)
        with torch.no_grad(), torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(seed)
            for batch in tqdm(loader, desc="rectified-label quality", unit="batch",
                              disable=not progress):
                x = batch["img"].to(dev, torch.float32)
                feat = model(x)["feat"].float()
                size = feat.shape[-2:] if resolution == "feat" else (x.shape[-2] // 4, x.shape[-1] // 4)
                q = torch.stack([soft_store.get(str(name)) for name in batch["name"]]).to(dev)
                weights = rectification_weights(up(feat, size), protos, temperature)
                labels, _ = rectify_pseudo_labels(up(q, size), weights, threshold)
                gt = batch["label"].to(dev)
                labels = F.interpolate(labels[:, None].float(), size=gt.shape[-2:], mode="nearest")
                acc.add(labels[:, 0].long(), gt)
    finally:
        with torch.no_grad():
            for buffer, value in zip(model.buffers(), saved):
                buffer.copy_(value)
        model.train(was_training)
    return acc.result()


def checkpoint_prototypes(checkpoint: Mapping[str, Any] | PathLike, *,
                          allow_pickle: bool = False) -> Tensor:
    """A stage-1 checkpoint's final prototypes (``ckpt["ResNet101"]["objective_vectors"]``,
    float32 C×D). Raises when they are missing or all zero (a checkpoint without prototypes)."""
    from proda.models.checkpoint import NET_KEY, load_checkpoint

    ckpt = checkpoint if isinstance(checkpoint, Mapping) \
        else load_checkpoint(checkpoint, allow_pickle=allow_pickle)
    what = "the checkpoint" if isinstance(checkpoint, Mapping) else f"checkpoint {checkpoint}"
    vectors = ckpt.get(NET_KEY, {}).get("objective_vectors")
    if vectors is None:
        raise ValueError(f"{what} holds no objective_vectors (prototypes)")
    vectors = torch.as_tensor(vectors).float()
    if vectors.dim() != 2 or not bool(vectors.any()):
        raise ValueError(f"{what} holds no prototypes (objective_vectors {tuple(vectors.shape)} "
                         f"are {'all zero' if vectors.dim() == 2 else 'not C×D'}): not a stage-1 model?")
    return vectors


# ----------------------------------------------------------------------------- outputs
def quality_table(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows ``{"artifact", "miou", "pixel_acc", "kept_fraction"}`` (extra keys dropped) → table."""
    for i, row in enumerate(rows):
        if missing := [k for k in QUALITY_COLUMNS if k not in row]:
            raise ValueError(f"label-quality row {i} lacks {missing}")
    table = pd.DataFrame([{k: row[k] for k in QUALITY_COLUMNS} for row in rows],
                         columns=list(QUALITY_COLUMNS))
    return table.astype({k: float for k in QUALITY_KEYS})


def write_quality_csv(rows: Sequence[Mapping[str, Any]], path: PathLike) -> Path:
    """``label_quality.csv``: columns ``artifact, miou, pixel_acc, kept_fraction`` (percent,
    empty for NaN), one row per artifact in the given order; written atomically."""
    path = Path(path)
    table = quality_table(rows)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return path


def plot_quality(csv_path: PathLike, path: PathLike) -> Path:
    """Grouped bars per artifact: mIoU, pixel accuracy and kept fraction (%)."""
    table = pd.read_csv(csv_path)
    if list(table.columns) != list(QUALITY_COLUMNS):
        raise ValueError(f"{csv_path} must have the columns {', '.join(QUALITY_COLUMNS)}")
    names = {"miou": "mIoU (kept pixels)", "pixel_acc": "pixel accuracy (kept pixels)",
             "kept_fraction": "kept fraction of labelled pixels"}
    fig = Figure(figsize=(min(14.0, 3.0 + 1.6 * len(table)), 4.0), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(table))
    width = 0.8 / len(QUALITY_KEYS)
    for i, key in enumerate(QUALITY_KEYS):
        bars = ax.bar(x + (i - 1) * width, table[key].to_numpy(dtype=float), width, label=names[key])
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(x, [str(a) for a in table["artifact"]], rotation=15 if len(table) > 3 else 0,
                  ha="right" if len(table) > 3 else "center")
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.set_title("Pseudo-label quality on the target training images")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", fontsize=8, ncol=3)
    return save_figure(fig, path)
