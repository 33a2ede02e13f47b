"""SYNTHIA-RAND-CITYSCAPES loader (docs/method.md §2.1): ``RGB/<name>.png`` + ``GT/LABELS/<name>.png``."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .base import DatasetError, PathLike, Sample, SegmentationDataset, Size, check_pairs, require_dir
from .labels import check_n_class, id_to_trainid_lut

# SYNTHIA class ids 0 (void) .. 22 (lane marking); any other value is a bad label file.
N_IDS = 23


def read_synthia_ids(path: PathLike) -> np.ndarray:
    """Class-id channel of a 16-bit multi-channel SYNTHIA label.

    It is channel 0 in RGB order, i.e. index 2 of OpenCV's BGR(A) order; a single-channel file
    is returned as is.
    """
    path = Path(path)
    ids = cv2.imread(str(path), cv2.IMREAD_UNCHANGED) if path.is_file() else None
    if ids is None:
        raise DatasetError(f"cannot read SYNTHIA label {path}")
    if ids.ndim == 3:
        if ids.shape[2] < 3:
            raise DatasetError(f"SYNTHIA label {path} has {ids.shape[2]} channels, expected 1, 3 or 4")
        ids = ids[:, :, 2]
    return np.ascontiguousarray(ids)


class SynthiaDataset(SegmentationDataset):
    """SYNTHIA with labels mapped to ``n_class`` (19/16/13) train ids.

    Deviation: the official list is ``os.listdir(RGB)`` in filesystem order; here it is sorted
    so that runs are deterministic across machines. A class id outside 0..22, or a label not of
    its image's size, is a DatasetError.
    """

    def __init__(self, root: PathLike, n_class: int = 16, size: Size | None = (1280, 760),
                 labels: bool = True) -> None:
        root = require_dir(root, "SYNTHIA root")
        img_dir = require_dir(root / "RGB", "SYNTHIA image folder")
        lbl_dir = require_dir(root / "GT" / "LABELS", "SYNTHIA label folder") if labels else None
        images = sorted(img_dir.glob("*.png"))
        if lbl_dir is not None:
            for img in images:
                if not (lbl_dir / img.name).is_file():
                    raise DatasetError(f"SYNTHIA image {img} has no label {lbl_dir / img.name}")
            check_pairs(images, sorted(lbl_dir.glob("*.png")), lambda lb: img_dir / lb.name, "SYNTHIA")
        samples = [Sample(img, lbl_dir / img.name if lbl_dir else None, img.name) for img in images]
        lut = id_to_trainid_lut("synthia", check_n_class(n_class))[:N_IDS]
        super().__init__(samples, lut, n_class, size, img_dir, table="SYNTHIA")
        self.root = root

    def read_raw_label(self, path: Path) -> np.ndarray:
        return read_synthia_ids(path)
