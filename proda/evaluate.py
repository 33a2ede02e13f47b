"""Evaluation of a segmentation checkpoint on a labelled split (docs/method.md §7; the official test.py).

``proda evaluate --checkpoint CKPT --root CITYSCAPES_ROOT`` prints the per-class IoU table and
mIoU; ``--out`` writes the evaluation CSV and ``--save-dir`` the predictions.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from proda.data import build_dataset
from proda.data.labels import class_names, colorize
from proda.files import atomic_path
from proda.metrics import ConfusionAccumulator, IoUTable
from proda.models.checkpoint import build_model
from proda.runtime import eval_mode, resolve_device

PathLike = str | os.PathLike


def upsample_logits(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """N×C logits as float32, upsampled bilinearly (align_corners=True) to ``size`` (H, W), with
    autocast disabled: a caller's autocast never lowers the precision of the upsampled logits."""
    with torch.autocast(logits.device.type, enabled=False):
        return F.interpolate(logits.float(), size=tuple(size), mode="bilinear", align_corners=True)


def predict(model: nn.Module, img_batch: torch.Tensor,
            size: Sequence[int] | None = None) -> torch.Tensor:
    """Train-id predictions N×H×W: eval mode, logits upsampled (bilinear, align_corners=True)
    to ``size`` (H, W; default the input's) and argmax over classes. No flip, no multi-scale."""
    with eval_mode(model):
        logits = model(img_batch)["out"]
        size = tuple(size) if size is not None else tuple(img_batch.shape[-2:])
        return upsample_logits(logits, size).argmax(dim=1)


def save_png(array: np.ndarray, path: Path) -> None:
    """Write a uint8 image (H×W → mode L, H×W×3 → RGB) atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def save_predictions(pred: torch.Tensor, names: Sequence[str], save_dir: PathLike,
                     n_class: int) -> None:
    """For each image: ``<stem>.png`` (train ids, mode L) and ``<stem>_color.png`` (palette)."""
    out = Path(save_dir)
    out.mkdir(parents=True, exist_ok=True)
    for label, name in zip(pred.cpu().numpy().astype(np.uint8), names):
        stem = Path(name).stem
        save_png(label, out / f"{stem}.png")
        save_png(colorize(label, n_class), out / f"{stem}_color.png")


def evaluate_model(model: nn.Module, dataset: Dataset, n_class: int, *, batch_size: int = 4,
                   device: str | torch.device = "auto", num_workers: int = 0,
                   progress: bool = True, save_dir: PathLike | None = None) -> IoUTable:
    """Confusion-matrix scores of ``model`` over ``dataset`` (items ``img``, ``label``, ``name``).

    ``model`` is moved to ``device`` and predicts in eval mode (its own mode is restored);
    ``save_dir`` receives the predictions.
    """
    dev = resolve_device(device)
    model.to(dev)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=dev.type == "cuda")
    acc = ConfusionAccumulator(n_class)
    for batch in tqdm(loader, desc="evaluate", unit="batch", disable=not progress):
        label = batch["label"].to(dev, non_blocking=True)
        pred = predict(model, batch["img"].to(dev, non_blocking=True), size=label.shape[-2:])
        acc.add(pred, label)
        if save_dir is not None:
            save_predictions(pred, batch["name"], save_dir, n_class)
    return acc.table()


def _format_value(value: float) -> str:
    return "" if math.isnan(value) else repr(float(value))


def write_eval_csv(table: IoUTable, path: PathLike, n_class: int) -> Path:
    """The evaluation CSV (``class,iou`` in percent, empty cell for NaN), written atomically."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["class", "iou"])
        rows = table.to_rows(class_names(n_class), n_class)
        writer.writerows((key, _format_value(v)) for key, v in rows)
    return path


def format_table(table: IoUTable, n_class: int) -> str:
    """Human-readable per-class IoU table with the summary rows (percent)."""
    rows = table.to_rows(class_names(n_class), n_class)
    width = max(len(key) for key, _ in rows)
    lines = [f"{key:<{width}}  {'n/a' if math.isnan(v) else format(v, '.2f'):>6}" for key, v in rows]
    return "\n".join(lines[:n_class] + ["-" * (width + 8)] + lines[n_class:])


def evaluate_checkpoint(checkpoint: PathLike, *, dataset_kind: str = "cityscapes", root: PathLike,
                        split: str = "val", n_class: int | None = None,
                        size: Sequence[int] | None = None, batch_size: int = 4,
                        device: str | torch.device = "auto", num_workers: int = 0,
                        progress: bool = True, out_csv: PathLike | None = None,
                        save_dir: PathLike | None = None, allow_pickle: bool = False) -> IoUTable:
    """Load ``checkpoint``, evaluate it on ``root``'s ``split`` and optionally write the CSV.

    ``n_class`` defaults to the checkpoint's; ``size`` (W, H) defaults to each file's native size.
    The checkpoint is read with ``weights_only=True``; ``allow_pickle`` is the opt-in for a
    trusted file holding other Python objects.
    """
    model, _ = build_model(checkpoint, allow_pickle=allow_pickle)
    n_class = model.num_classes if n_class is None else n_class
    if n_class != model.num_classes:
        raise ValueError(f"n_class={n_class} but checkpoint {checkpoint} has "
                         f"{model.num_classes} classes")
    dataset = build_dataset(dataset_kind, root, split=split, n_class=n_class,
                            size=tuple(size) if size is not None else None, labels=True)
    table = evaluate_model(model, dataset, n_class, batch_size=batch_size, device=device,
                           num_workers=num_workers, progress=progress, save_dir=save_dir)
    if out_csv is not None:
        write_eval_csv(table, out_csv, n_class)
    return table
