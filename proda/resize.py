"""The one resize of feature and probability maps: bilinear with ``align_corners=True``."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def up(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize with ``align_corners=True`` ("bilinear-AC" of docs/method.md)."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)
