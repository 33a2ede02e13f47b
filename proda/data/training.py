"""Training-time items: weak and strong views of a dataset item plus its pseudo labels (§2.5, §3).

Each item draws its randomness from generators seeded by ``(seed, epoch, index)``, so a batch
does not depend on the DataLoader's worker count or on the order items are fetched in (the
intended fix of §8 Q22). Call :meth:`TrainingDataset.set_epoch` before each epoch (with
``persistent_workers=False``, so that workers see the new epoch).
"""
from __future__ import annotations

import random
from typing import Any, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from .base import DatasetError, to_tensor
from .labels import IGNORE_INDEX
from .transforms import (apply_weak_label, apply_weak_pil, apply_weak_tensor, sample_weak_params,
                         strong_augment)


class SoftLabelStore(Protocol):
    """Soft pseudo labels: float ``C×h0×w0`` probabilities at the model's output resolution."""

    def get(self, name: str) -> np.ndarray | torch.Tensor: ...


class HardLabelStore(Protocol):
    """Hard pseudo labels: uint8 ``H×W`` train ids with 250 where the confidence is at or below
    the store's own threshold."""

    def get(self, name: str) -> np.ndarray: ...


def _item_name(dataset: Any, i: int) -> str:
    """Item ``i``'s name without loading its image when the dataset lists its samples."""
    samples = getattr(dataset, "samples", None)
    if samples is not None and hasattr(samples[i], "name"):
        return samples[i].name
    return dataset[i]["name"]


class TrainingDataset(Dataset):
    """Items ``img``, ``label``, ``weak_params``, ``name`` and, as configured, ``img_strong`` +
    ``strong_params`` (strong=True), ``img_full`` (full_image=True), ``lpsoft`` (soft_labels)
    and ``lp`` (hard_labels, thresholded by the store).

    ``dataset`` provides ``load_pil(i) -> (PIL RGB, uint8 H×W train ids)`` and item names.
    ``crop_wh`` is (W, H); ``small`` chooses what happens when the resized image is smaller than
    the crop (see :func:`proda.data.transforms.sample_weak_params`).
    """

    def __init__(self, dataset: Any, *, resize_base: int, crop_wh: Sequence[int],
                 scale_range: Sequence[float] = (0.5, 1.5), hflip: float = 0.5,
                 strong: bool = True, full_image: bool = False,
                 soft_labels: SoftLabelStore | None = None,
                 hard_labels: HardLabelStore | None = None, seed: int = 0, small: str = "resize") -> None:
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.dataset = dataset
        self.resize_base = int(resize_base)
        self.crop_wh = (int(crop_wh[0]), int(crop_wh[1]))
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.hflip = float(hflip)
        self.strong = strong
        self.full_image = full_image
        self.soft_labels = soft_labels
        self.hard_labels = hard_labels
        self.seed = int(seed)
        self.small = small
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random views the items show."""
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def rngs(self, i: int) -> tuple[random.Random, np.random.RandomState]:
        """The python and numpy generators of item ``i`` in the current epoch."""
        py_seed, np_seed = np.random.SeedSequence([self.seed, self.epoch, int(i)]).generate_state(2)
        return random.Random(int(py_seed)), np.random.RandomState(int(np_seed))

    def __getitem__(self, i: int) -> dict[str, Any]:
        rng, np_rng = self.rngs(i)
        name = _item_name(self.dataset, i)
        img, label = self.dataset.load_pil(i)
        img = img.convert("RGB")
        if label.shape != (img.height, img.width):  # the datasets check this per file already
            raise DatasetError(f"{name}: label shape {label.shape} does not match the image "
                               f"{img.height}×{img.width}")
        wp = sample_weak_params(rng, img.size, self.resize_base, self.crop_wh, self.scale_range,
                                self.hflip, self.small)
        weak = apply_weak_pil(img, wp, Image.Resampling.BILINEAR)
        item: dict[str, Any] = {
            "img": to_tensor(weak),
            "label": torch.from_numpy(apply_weak_label(label, wp, IGNORE_INDEX).astype(np.int64)),
            "weak_params": wp, "name": name}
        if self.strong:
            strong, sp = strong_augment(weak, rng, np_rng)
            item["img_strong"], item["strong_params"] = to_tensor(strong), sp
        if self.full_image:
            item["img_full"] = to_tensor(img)
        if self.soft_labels is not None:
            item["lpsoft"] = self._soft(name, img.size, wp)
        if self.hard_labels is not None:
            item["lp"] = self._hard(name, img.size, wp)
        return item

    def _soft(self, name: str, size_wh: tuple[int, int], wp) -> torch.Tensor:
        """Soft label: bilinear-AC to the image size, then the weak view (float32 C×ch×cw)."""
        q = self.soft_labels.get(name)
        q = (q if isinstance(q, torch.Tensor) else torch.from_numpy(np.asarray(q))).float()
        if q.dim() != 3:
            raise ValueError(f"{name}: soft label must be C×h×w, got shape {tuple(q.shape)}")
        q = F.interpolate(q[None], size=(size_wh[1], size_wh[0]), mode="bilinear",
                          align_corners=True)[0]
        return apply_weak_tensor(q, wp).contiguous()

    def _hard(self, name: str, size_wh: tuple[int, int], wp) -> torch.Tensor:
        """Hard label at the image size (checked, never resized), then the weak view padded with
        250 (int64). Hard labels are written at the size of the dataset's items, so another size
        means they were made for another data configuration."""
        lp = np.asarray(self.hard_labels.get(name))
        if lp.ndim != 2 or lp.dtype != np.uint8:
            raise ValueError(f"{name}: hard label must be uint8 H×W, got {lp.dtype} {lp.shape}")
        if (lp.shape[1], lp.shape[0]) != tuple(size_wh):
            store = getattr(self.hard_labels, "path", type(self.hard_labels).__name__)
            raise DatasetError(f"hard pseudo label of {name} in {store} is {lp.shape[1]}x"
                               f"{lp.shape[0]} but the image is {size_wh[0]}x{size_wh[1]}")
        return torch.from_numpy(apply_weak_label(lp, wp, IGNORE_INDEX).astype(np.int64))


def collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors along a new batch dim; keep everything else (params, names) as lists."""
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out
