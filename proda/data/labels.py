"""Label conventions (docs/method.md §2.2, §2.4): id → train-id maps, class names, palette, colouring.

Train id ``i`` of an ``n_class`` setting is the position of the raw id in the matching list;
every raw id not listed maps to :data:`IGNORE_INDEX`.
"""
from __future__ import annotations

import numpy as np

IGNORE_INDEX = 250
N_CLASSES = (19, 16, 13)

# Cityscapes labelIds (also the GTA5 id scheme) in train-id order.
CITYSCAPES_IDS: dict[int, tuple[int, ...]] = {
    19: (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33),
    16: (7, 8, 11, 12, 13, 17, 19, 20, 21, 23, 24, 25, 26, 28, 32, 33),
    13: (7, 8, 11, 19, 20, 21, 23, 24, 25, 26, 28, 32, 33),
}
# SYNTHIA class ids in train-id order (aligned with the Cityscapes train ids of the same n_class).
SYNTHIA_IDS: dict[int, tuple[int, ...]] = {
    19: (3, 4, 2, 21, 5, 7, 15, 9, 6, 16, 1, 10, 17, 8, 18, 19, 20, 12, 11),
    16: (3, 4, 2, 21, 5, 7, 15, 9, 6, 1, 10, 17, 8, 19, 12, 11),
    13: (3, 4, 2, 15, 9, 6, 1, 10, 17, 8, 19, 12, 11),
}
# GTA5's explicit void list (-1 included as in the official code; it never matches a PNG value).
GTA5_VOID_IDS: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30, 34, -1)

CLASS_NAMES_19: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)
PALETTE_19 = np.array([
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (0, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
], dtype=np.uint8)
# Reduced train id → 19-class train id (colouring and names).
TO19: dict[int, tuple[int, ...]] = {
    19: tuple(range(19)),
    16: (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18),
    13: (0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18),
}
# 16-class train ids left out of mIoU-13 (wall, fence, pole; docs/method.md §7).
MIOU13_EXCLUDED: tuple[int, ...] = (3, 4, 5)

# Size of the raw-id domain each label kind can hold; a value outside it is a bad label file.
# GTA5: ids 0..34 only (other values "would trip the label check", §2.2); Cityscapes: 8-bit PNG;
# SYNTHIA: 16-bit PNG channel.
LUT_SIZE = {"cityscapes": 256, "gta5": 35, "synthia": 65536}


def check_n_class(n_class: int) -> int:
    """Return ``n_class`` if it is 19, 16 or 13, else raise ValueError."""
    if n_class not in N_CLASSES:
        raise ValueError(f"n_class must be one of {N_CLASSES}, got {n_class!r}")
    return n_class


def class_names(n_class: int) -> tuple[str, ...]:
    """Class names in train-id order for ``n_class`` classes."""
    return tuple(CLASS_NAMES_19[i] for i in TO19[check_n_class(n_class)])


def palette(n_class: int) -> np.ndarray:
    """``n_class``×3 uint8 RGB colours in train-id order (``PALETTE_19[to19[id]]``)."""
    return PALETTE_19[list(TO19[check_n_class(n_class)])]


def raw_ids(kind: str, n_class: int) -> tuple[int, ...]:
    """The raw ids (in train-id order) of dataset ``kind`` for ``n_class`` classes."""
    check_n_class(n_class)
    if kind in ("cityscapes", "gta5"):
        if kind == "gta5" and n_class != 19:
            raise ValueError(f"GTA5 labels always use 19 classes, got n_class={n_class}")
        return CITYSCAPES_IDS[n_class]
    if kind == "synthia":
        return SYNTHIA_IDS[n_class]
    raise ValueError(f"unknown label kind {kind!r} (expected cityscapes, gta5 or synthia)")


def id_to_trainid_lut(kind: str, n_class: int) -> np.ndarray:
    """uint8 lookup table over every raw id ``kind`` can hold: ``lut[raw] = train id`` or 250."""
    ids = raw_ids(kind, n_class)
    lut = np.full(LUT_SIZE[kind], IGNORE_INDEX, dtype=np.uint8)
    lut[list(ids)] = np.arange(len(ids), dtype=np.uint8)
    return lut


def colorize(label: np.ndarray, n_class: int) -> np.ndarray:
    """H×W train ids → H×W×3 uint8 RGB; values outside [0, n_class) keep their value (clipped
    to 0..255) in all three channels (negatives → black), e.g. 250 → (250, 250, 250)."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"colorize expects an H×W label map, got shape {label.shape}")
    out = np.repeat(np.clip(label, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    valid = (label >= 0) & (label < n_class)
    out[valid] = palette(n_class)[label[valid].astype(np.intp)]
    return out
