"""GTA5 loader (docs/method.md §2.1): ``images/NNNNN.png``, ``labels/NNNNN.png``, ``split.mat``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from .base import DatasetError, PathLike, Sample, SegmentationDataset, Size, require_dir
from .labels import id_to_trainid_lut

SPLIT_KEYS = ("trainIds", "valIds", "testIds")


def split_length(path: Path) -> int:
    """N = len(trainIds) + len(valIds) + len(testIds) of ``split.mat`` (the official 'all' split).

    The real file stores column vectors, so the element count equals ``len``.
    """
    if not path.is_file():
        raise DatasetError(f"GTA5 split file not found: {path}")
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as err:  # scipy raises several unrelated types for corrupt files
        raise DatasetError(f"cannot read GTA5 split file {path}: {err}") from None
    missing = [k for k in SPLIT_KEYS if k not in mat]
    if missing:
        raise DatasetError(f"GTA5 split file {path} lacks {', '.join(missing)}")
    return sum(int(np.asarray(mat[k]).size) for k in SPLIT_KEYS)


class GTA5Dataset(SegmentationDataset):
    """All N GTA5 frames ``00001.png … {N:05d}.png`` (N from ``split.mat``), always 19 classes.

    Label values must lie in 0..34 (the GTA5 id table) and a label must have its image's size,
    else reading the item is a DatasetError; the void list maps to 250.
    """

    def __init__(self, root: PathLike, size: Size | None = (1914, 1052), labels: bool = True) -> None:
        root = require_dir(root, "GTA5 root")
        n = split_length(root / "split.mat")
        img_dir = require_dir(root / "images", "GTA5 image folder")
        lbl_dir = require_dir(root / "labels", "GTA5 label folder") if labels else None
        names = [f"{i:05d}.png" for i in range(1, n + 1)]
        for name in names:
            img, lbl = img_dir / name, (lbl_dir / name if lbl_dir else None)
            if not img.is_file():
                owner = f"label {lbl} has no image" if lbl and lbl.is_file() else "image not found:"
                raise DatasetError(f"GTA5 {owner} {img}")
            if lbl is not None and not lbl.is_file():
                raise DatasetError(f"GTA5 image {img} has no label {lbl}")
        samples = [Sample(img_dir / m, lbl_dir / m if lbl_dir else None, m) for m in names]
        lut = id_to_trainid_lut("gta5", 19)  # covers exactly the ids 0..34
        super().__init__(samples, lut, 19, size, root / "split.mat", table="GTA5")
        self.root = root
