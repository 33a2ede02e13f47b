"""Datasets: the three real-layout loaders, label conventions and the toy-city benchmark."""
from __future__ import annotations

from .base import DatasetError, SegmentationDataset, Size
from .cityscapes import CityscapesDataset
from .gta5 import GTA5Dataset
from .labels import IGNORE_INDEX
from .synthia import SynthiaDataset

DATASET_KINDS = ("cityscapes", "gta5", "synthia")


def build_dataset(kind: str, root, split: str = "train", n_class: int = 19,
                  size: Size | None = None, labels: bool = True) -> SegmentationDataset:
    """Dataset ``kind`` (cityscapes | gta5 | synthia) at ``root``; ``size`` (W, H) or None = native.

    GTA5 and SYNTHIA have a single split, so ``split`` is ignored for them; GTA5 accepts only
    ``n_class=19``.
    """
    if kind == "cityscapes":
        return CityscapesDataset(root, split=split, n_class=n_class, size=size, labels=labels)
    if kind == "gta5":
        if n_class != 19:
            raise ValueError(f"GTA5 labels always use 19 classes, got n_class={n_class}")
        return GTA5Dataset(root, size=size, labels=labels)
    if kind == "synthia":
        return SynthiaDataset(root, n_class=n_class, size=size, labels=labels)
    raise ValueError(f"unknown dataset kind {kind!r} (expected one of {', '.join(DATASET_KINDS)})")


__all__ = ["CityscapesDataset", "DATASET_KINDS", "DatasetError", "GTA5Dataset", "IGNORE_INDEX",
           "SegmentationDataset", "SynthiaDataset", "build_dataset"]
