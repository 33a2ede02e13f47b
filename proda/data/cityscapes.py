"""Cityscapes loader (docs/method.md §2.1): ``leftImg8bit/<split>/<city>/*.png`` + ``gtFine`` labelIds."""
from __future__ import annotations

from pathlib import Path

from .base import DatasetError, PathLike, Sample, SegmentationDataset, Size, check_pairs, require_dir
from .labels import check_n_class, id_to_trainid_lut

IMAGE_SUFFIX = "leftImg8bit.png"
LABEL_SUFFIX = "gtFine_labelIds.png"
# The Cityscapes id table is 0..33 plus -1 (license plate), which is never drawn into a
# labelIds PNG; any other value is a bad label file, not "ignore".
N_IDS = 34


def label_path(root: Path, split: str, image: Path) -> Path:
    """``gtFine/<split>/<city>/<basename minus 'leftImg8bit.png'>gtFine_labelIds.png``."""
    return root / "gtFine" / split / image.parent.name / (image.name[:-len(IMAGE_SUFFIX)] + LABEL_SUFFIX)


def image_path(root: Path, split: str, label: Path) -> Path:
    """Inverse of :func:`label_path`."""
    return root / "leftImg8bit" / split / label.parent.name / (label.name[:-len(LABEL_SUFFIX)] + IMAGE_SUFFIX)


class CityscapesDataset(SegmentationDataset):
    """Cityscapes ``split`` with labels mapped to ``n_class`` (19/16/13) train ids.

    Images are every ``*.png`` found recursively under ``leftImg8bit/<split>``, sorted by path
    string. ``labels=False`` ignores ``gtFine`` (e.g. the test split) and yields all-250 labels.
    A label id outside 0..33, or a label not of its image's size, is a DatasetError.
    """

    def __init__(self, root: PathLike, split: str = "train", n_class: int = 19,
                 size: Size | None = (2048, 1024), labels: bool = True) -> None:
        root = require_dir(root, "Cityscapes root")
        img_dir = require_dir(root / "leftImg8bit" / split, f"Cityscapes {split!r} image folder")
        images = [Path(p) for p in sorted(str(p) for p in img_dir.rglob("*.png"))]
        for img in images:
            if not img.name.endswith(IMAGE_SUFFIX):
                raise DatasetError(f"Cityscapes image {img} does not end with {IMAGE_SUFFIX}")
        samples = [Sample(img, label_path(root, split, img) if labels else None, img.name)
                   for img in images]
        if labels and images:
            self._check_labels(root, split, samples)
        lut = id_to_trainid_lut("cityscapes", check_n_class(n_class))[:N_IDS]
        super().__init__(samples, lut, n_class, size, img_dir, table="Cityscapes")
        self.root, self.split = root, split

    @staticmethod
    def _check_labels(root: Path, split: str, samples: list[Sample]) -> None:
        for s in samples:
            if not s.label.is_file():
                raise DatasetError(f"Cityscapes image {s.image} has no label {s.label}")
        label_dir = require_dir(root / "gtFine" / split, f"Cityscapes {split!r} label folder")
        check_pairs([s.image for s in samples], sorted(label_dir.rglob("*" + LABEL_SUFFIX)),
                    lambda lb: image_path(root, split, lb), "Cityscapes")
