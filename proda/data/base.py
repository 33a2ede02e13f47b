"""Shared loading helpers and the base segmentation dataset (docs/method.md §2.3, §2.5).

Images are read with PIL as RGB and resized bilinearly, labels with nearest; raw ids are mapped
to train ids through a lookup table (:func:`proda.data.labels.id_to_trainid_lut`) cut to the
dataset's id table. Labels are checked, never silently fixed: a raw id outside the id table, or
a label whose native size differs from its image's, raises. Every bad input raises
:class:`DatasetError` with a one-line message naming the offending path(s).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .labels import IGNORE_INDEX

Size = tuple[int, int]  # (W, H), PIL order
PathLike = str | os.PathLike

# RGB uint8 → float32 in [0, 1], computed as the official float64 (x - 0) / 255 then cast.
_TO_UNIT = (np.arange(256, dtype=np.float64) / 255.0).astype(np.float32)


class DatasetError(ValueError):
    """A dataset file or folder is missing, unreadable or holds invalid values."""


@dataclass(frozen=True)
class Sample:
    """One dataset item: image path, label path (None = unlabelled) and the reported name."""

    image: Path
    label: Path | None
    name: str


def require_dir(path: PathLike, what: str) -> Path:
    """Return ``path`` as a Path, raising DatasetError naming it when it is not a directory."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"{what} not found: {path}")
    return path


def _open(path: Path, kind: str) -> Image.Image:
    try:
        im = Image.open(path)
        im.load()
    except FileNotFoundError:
        raise DatasetError(f"{kind} file not found: {path}") from None
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise DatasetError(f"cannot read {kind} {path}: {err}") from None
    return im


def image_size(path: PathLike) -> Size:
    """Native (W, H) of an image file, read from its header (the pixels are not decoded)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise DatasetError(f"image file not found: {path}") from None
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise DatasetError(f"cannot read image {path}: {err}") from None


def resize_rgb(im: Image.Image, size: Size | None) -> Image.Image:
    """Bilinear resize (PIL) of an image to ``size`` (W, H) when it differs."""
    if size is not None and im.size != tuple(size):
        im = im.resize(tuple(size), Image.BILINEAR)
    return im


def read_rgb(path: PathLike, size: Size | None = None) -> Image.Image:
    """Read an image as PIL RGB, resized bilinearly to ``size`` (W, H) when it differs."""
    return resize_rgb(_open(Path(path), "image").convert("RGB"), size)


def resize_ids(ids: np.ndarray, size: Size | None) -> np.ndarray:
    """Nearest-neighbour resize (PIL) of an H×W integer id map to ``size`` (W, H)."""
    if size is None or (ids.shape[1], ids.shape[0]) == tuple(size):
        return ids
    return np.asarray(Image.fromarray(ids).resize(tuple(size), Image.NEAREST))


def check_label_size(ids: np.ndarray, label: PathLike, image: PathLike, image_wh: Size) -> None:
    """Raise DatasetError naming both files when the H×W ``ids`` of ``label`` is not ``image_wh``.

    A label must be drawn on its own image; one of another size is a wrong or damaged file,
    which a nearest resize would only hide.
    """
    label_wh = (int(ids.shape[1]), int(ids.shape[0]))
    if label_wh != tuple(image_wh):
        raise DatasetError(f"label {label} is {label_wh[0]}x{label_wh[1]} but its image {image} "
                           f"is {image_wh[0]}x{image_wh[1]}")


def read_label_ids(path: PathLike, size: Size | None = None) -> np.ndarray:
    """Read a single-channel label PNG (L, P, I;16 or I) as raw ids, nearest-resized to ``size``."""
    path = Path(path)
    im = _open(path, "label")
    ids = np.asarray(im)
    if ids.ndim != 2:
        raise DatasetError(f"label {path} has mode {im.mode}, expected a single-channel id map")
    return resize_ids(ids, size)


def map_ids(ids: np.ndarray, lut: np.ndarray, path: PathLike, table: str = "valid") -> np.ndarray:
    """Raw ids → uint8 train ids via ``lut``; a value outside the table's domain is an error.

    ``lut`` covers exactly the dataset's id table (``table`` names it in the message); the check
    is two vectorised reductions (min, max) over the id map.
    """
    if ids.size:
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= len(lut):
            bad = hi if hi >= len(lut) else lo
            raise DatasetError(f"label {path} holds id {bad}, outside the {table} id range "
                               f"0..{len(lut) - 1}")
    return lut[ids.astype(np.intp, copy=False)]


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB → float32 3×H×W tensor holding RGB / 255 (no mean/std normalisation, §2.3)."""
    return torch.from_numpy(_TO_UNIT[np.asarray(img, dtype=np.uint8)]).permute(2, 0, 1).contiguous()


def check_pairs(images: Sequence[Path], labels: Sequence[Path], pair, what: str) -> None:
    """Raise DatasetError for a label file whose image (``pair(label)``) is not in ``images``."""
    known = {Path(p) for p in images}
    for label in labels:
        if pair(label) not in known:
            raise DatasetError(f"{what} label {label} has no matching image {pair(label)}")


class SegmentationDataset(Dataset):
    """Items ``{"img", "label", "name"}`` (architecture.md) from a list of :class:`Sample`.

    ``size`` (W, H) resizes image (bilinear) and label (nearest); None keeps the native size.
    A label must have its image's native size and hold only ids of the dataset's id table
    (``lut`` covers exactly that table, ``table`` names it in errors); otherwise reading the
    item raises DatasetError naming the file(s). Samples without a label yield all-250 labels.
    """

    def __init__(self, samples: Sequence[Sample], lut: np.ndarray, n_class: int,
                 size: Size | None, source: PathLike, table: str = "valid") -> None:
        if not samples:
            raise DatasetError(f"no images found in {source}")
        self.samples = list(samples)
        self.lut = lut
        self.n_class = n_class
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.table = table

    def __len__(self) -> int:
        return len(self.samples)

    def read_raw_label(self, path: Path) -> np.ndarray:
        """Native-size raw id map of one label file (SYNTHIA overrides this)."""
        return read_label_ids(path)

    def load_label(self, i: int, size: Size | None = None) -> np.ndarray:
        """uint8 H×W train ids of item ``i`` at ``size`` (W, H; default: the dataset's ``size``,
        else the image's native size); all 250 when unlabelled.

        The label's native size is checked against its image's (read from the image header).
        """
        native = image_size(self.samples[i].image)
        return self._label(i, native, size or self.size or native)

    def _label(self, i: int, image_wh: Size, size: Size) -> np.ndarray:
        sample = self.samples[i]
        if sample.label is None:
            return np.full((size[1], size[0]), IGNORE_INDEX, dtype=np.uint8)
        ids = self.read_raw_label(sample.label)
        check_label_size(ids, sample.label, sample.image, image_wh)
        train_ids = map_ids(ids, self.lut, sample.label, self.table)  # nearest resize commutes
        return resize_ids(train_ids, size)

    def check_label(self, i: int) -> None:
        """Read the label of item ``i`` at its native size: its ids must be in the table and its
        size its image's (DatasetError naming the file otherwise); nothing is resized."""
        native = image_size(self.samples[i].image)
        self._label(i, native, native)

    def load_pil(self, i: int) -> tuple[Image.Image, np.ndarray]:
        """(PIL RGB image, uint8 H×W train ids), both at ``size`` (or the image's native size)."""
        img = read_rgb(self.samples[i].image)
        label = self._label(i, img.size, self.size or img.size)
        return resize_rgb(img, self.size), label

    def __getitem__(self, i: int) -> dict:
        img, label = self.load_pil(i)
        return {"img": to_tensor(img), "label": torch.from_numpy(label.astype(np.int64)),
                "name": self.samples[i].name}
