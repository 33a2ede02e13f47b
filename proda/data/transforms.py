"""Weak / strong augmentation with replayable parameters, and moving maps between views (§3).

* Weak view (§3.1): random resize of the width to ``U(scale_range)·resize_base`` (aspect kept),
  random crop, random horizontal flip. :class:`WeakParams` records it so that images (PIL),
  label maps (nearest) and soft-label tensors (bilinear-AC) are transformed identically.
* Strong view (§3.2): ``RandAugmentMC(n=2, m=10)`` of the weak crop with the FixMatch op pool,
  drawing its randomness in the order of Appendix B. :class:`StrongParams` records it.
* :func:`label_strong_T` (§3.3) replays the geometric part of a strong view on maps at 1/``scale``
  crop resolution; :func:`full2weak` (§3.4) moves full-image feature maps into the weak view.

Quirks (§8): Q6 and Q7 are fixed unless ``parity=True``; Q23 (crop larger than the resized
image) resizes the image to the crop size and records it (``small="pad"`` pads instead).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from .labels import IGNORE_INDEX

GREY = 127
GEOMETRIC_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")  # official replay order
_SMALL_MODES = ("resize", "pad")


# --------------------------------------------------------------------------- weak view (§3.1)
@dataclass(frozen=True)
class WeakParams:
    """One weak view: resize to ``resized_hw`` (h, w), crop rows y1:y2 and columns x1:x2, flip.

    The crop may reach past the bottom/right edge of the resized image (``small="pad"``); that
    part is filled (image 0, labels 250, tensors 0).
    """

    resized_hw: tuple[int, int]
    crop: tuple[int, int, int, int]  # (y1, y2, x1, x2), end exclusive
    flip: bool


def sample_weak_params(rng: random.Random, image_wh: Sequence[int], resize_base: int,
                       crop_wh: Sequence[int], scale_range: Sequence[float] = (0.5, 1.5),
                       flip_p: float = 0.5, small: str = "resize") -> WeakParams:
    """Draw RandomSized → RandomCrop → RandomHorizontallyFlip parameters (§3.1, Appendix B).

    ``w = int(U(scale_range)·resize_base)``, ``h = int(w / (W0/H0))``, then ``x1``, ``y1`` with
    ``randint`` (inclusive) and the flip with ``random() < flip_p``. When the resized image is
    smaller than the crop in either dimension (Q23), ``small="resize"`` resizes it to the crop
    size instead (no crop draws, like the official branch), ``small="pad"`` keeps the size and
    lets the crop extend past the bottom/right edge.
    """
    (W0, H0), (cw, ch) = (int(v) for v in image_wh), (int(v) for v in crop_wh)
    if min(W0, H0, cw, ch, int(resize_base)) <= 0:
        raise ValueError(f"image_wh {tuple(image_wh)}, crop_wh {tuple(crop_wh)} and resize_base "
                         f"{resize_base} must be positive")
    if small not in _SMALL_MODES:
        raise ValueError(f"small must be one of {_SMALL_MODES}, got {small!r}")
    w = int(rng.uniform(float(scale_range[0]), float(scale_range[1])) * resize_base)
    h = int(w / (W0 / H0))
    if small == "resize" and (w < cw or h < ch):
        resized, crop = (ch, cw), (0, ch, 0, cw)
    else:
        w, h = max(w, 1), max(h, 1)
        x1 = rng.randint(0, max(w - cw, 0))
        y1 = rng.randint(0, max(h - ch, 0))
        resized, crop = (h, w), (y1, y1 + ch, x1, x1 + cw)
    return WeakParams(resized_hw=resized, crop=crop, flip=rng.random() < flip_p)


def _crop_pil(img: Image.Image, crop: tuple[int, int, int, int], fill: int) -> Image.Image:
    y1, y2, x1, x2 = crop
    if x1 >= 0 and y1 >= 0 and x2 <= img.width and y2 <= img.height:
        return img.crop((x1, y1, x2, y2))
    canvas = Image.new(img.mode, (x2 - x1, y2 - y1), fill if len(img.getbands()) == 1
                       else (fill,) * len(img.getbands()))
    canvas.paste(img, (-x1, -y1))
    return canvas


def apply_weak_pil(img: Image.Image, p: WeakParams, resample: int, fill: int = 0) -> Image.Image:
    """Resize (``resample``: bilinear for images, nearest for labels), crop and flip a PIL image."""
    h, w = p.resized_hw
    if img.size != (w, h):
        img = img.resize((w, h), resample)
    img = _crop_pil(img, p.crop, fill)
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if p.flip else img


def apply_weak_label(label: np.ndarray, p: WeakParams, fill: int = IGNORE_INDEX) -> np.ndarray:
    """Weak view of a uint8 H×W label map: nearest resize, crop (padded with ``fill``), flip."""
    if label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError(f"label map must be uint8 H×W, got {label.dtype} {label.shape}")
    out = apply_weak_pil(Image.fromarray(label), p, Image.Resampling.NEAREST, fill)
    return np.array(out, dtype=np.uint8)


def _crop_tensor(t: torch.Tensor, crop: tuple[int, int, int, int], fill: float) -> torch.Tensor:
    """Rows y1:y2, columns x1:x2 of the last two dims, padding with ``fill`` outside the map."""
    y1, y2, x1, x2 = crop
    H, W = t.shape[-2:]
    pads = (max(0, -x1), max(0, x2 - W), max(0, -y1), max(0, y2 - H))
    if any(pads):
        t = F.pad(t, pads, value=fill)
        y1, y2, x1, x2 = y1 + pads[2], y2 + pads[2], x1 + pads[0], x2 + pads[0]
    return t[..., y1:y2, x1:x2]


def apply_weak_tensor(t: torch.Tensor, p: WeakParams, fill: float = 0.0) -> torch.Tensor:
    """Weak view of a float C×H×W tensor (soft labels): bilinear-AC resize, crop, flip."""
    if t.dim() != 3 or not t.is_floating_point():
        raise ValueError(f"expected a float C×H×W tensor, got {t.dtype} {tuple(t.shape)}")
    h, w = p.resized_hw
    if tuple(t.shape[-2:]) != (h, w):
        t = F.interpolate(t[None], size=(h, w), mode="bilinear", align_corners=True)[0]
    t = _crop_tensor(t, p.crop, fill)
    return t.flip(-1) if p.flip else t


# ------------------------------------------------------------------------- strong view (§3.2)
@dataclass
class StrongParams:
    """One strong view: optional flip, the sampled ops in order, then the cutout rectangle.

    ``ops`` holds ``(name, value)`` per sampled op; ``value`` is None when the op was skipped,
    else the parameter it was applied with: signed degrees (Rotate), signed shear factor,
    signed pixels (TranslateX/Y, ``int(t·W)`` / ``int(t·H)``), the enhancement factor, the
    posterize bits, the solarize threshold, or the drawn level for ops without a parameter.
    ``cutout`` = (x0, y0, x1, y1), both corners inclusive (PIL ``rectangle``).
    """

    hflip: bool
    ops: list[tuple[str, float | None]]
    cutout: tuple[int, int, int, int]


def _float_level(max_v: float, bias: float = 0.0) -> Callable[[int], float]:
    return lambda v: float(v) * max_v / 10 + bias


def _int_level(max_v: int, bias: int = 0) -> Callable[[int], int]:
    return lambda v: int(v * max_v / 10) + bias


# FixMatch pool, in its official order (random.choices indexes into it): (name, parameter, signed)
_POOL: tuple[tuple[str, Callable[[int], float] | None, bool], ...] = (
    ("AutoContrast", None, False),
    ("Brightness", _float_level(0.9, 0.05), False),
    ("Color", _float_level(0.9, 0.05), False),
    ("Contrast", _float_level(0.9, 0.05), False),
    ("Equalize", None, False),
    ("Identity", None, False),
    ("Posterize", _int_level(4, 4), False),
    ("Rotate", _int_level(30), True),
    ("Sharpness", _float_level(0.9, 0.05), False),
    ("ShearX", _float_level(0.3), True),
    ("ShearY", _float_level(0.3), True),
    ("Solarize", lambda v: 256 - _int_level(256)(v), False),
    ("TranslateX", _float_level(0.3), True),
    ("TranslateY", _float_level(0.3), True),
)
OP_NAMES = tuple(name for name, _, _ in _POOL)


def _grey(img: Image.Image) -> int | tuple[int, ...]:
    bands = len(img.getbands())
    return GREY if bands == 1 else (GREY,) * bands


def _affine(img: Image.Image, coeffs: tuple[float, ...]) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR,
                         fillcolor=_grey(img))


_APPLY: dict[str, Callable[[Image.Image, float], Image.Image]] = {
    "AutoContrast": lambda img, v: ImageOps.autocontrast(img),
    "Brightness": lambda img, v: ImageEnhance.Brightness(img).enhance(v),
    "Color": lambda img, v: ImageEnhance.Color(img).enhance(v),
    "Contrast": lambda img, v: ImageEnhance.Contrast(img).enhance(v),
    "Equalize": lambda img, v: ImageOps.equalize(img),
    "Identity": lambda img, v: img,
    "Posterize": lambda img, v: ImageOps.posterize(img, int(v)),
    "Rotate": lambda img, v: img.rotate(v, Image.Resampling.BILINEAR, fillcolor=_grey(img)),
    "Sharpness": lambda img, v: ImageEnhance.Sharpness(img).enhance(v),
    "ShearX": lambda img, v: _affine(img, (1, v, 0, 0, 1, 0)),
    "ShearY": lambda img, v: _affine(img, (1, 0, 0, v, 1, 0)),
    "Solarize": lambda img, v: ImageOps.solarize(img, int(v)),
    "TranslateX": lambda img, v: _affine(img, (1, 0, v, 0, 1, 0)),
    "TranslateY": lambda img, v: _affine(img, (1, 0, 0, 0, 1, v)),
}


def sample_strong_params(rng: random.Random, np_rng: np.random.RandomState,
                         image_wh: Sequence[int], n: int = 2, m: int = 10) -> StrongParams:
    """Draw a RandAugmentMC(n, m) view of a W×H image in the official order (Appendix B).

    flip ``rng.random() < 0.5`` → ``rng.choices(pool, k=n)`` → per op: level
    ``np_rng.randint(1, m)``, apply if ``rng.random() < 0.5``, sign flip if ``rng.random() < 0.5``
    (signed ops only, drawn only when applied) → cutout centre ``np_rng.uniform`` in x then y.
    """
    W, H = (int(v) for v in image_wh)
    hflip = rng.random() < 0.5
    ops: list[tuple[str, float | None]] = []
    for name, level, signed in rng.choices(_POOL, k=n):
        v = int(np_rng.randint(1, m))
        if not rng.random() < 0.5:
            ops.append((name, None))
            continue
        value = level(v) if level is not None else float(v)
        if signed and rng.random() < 0.5:
            value = -value
        if name == "TranslateX":
            value = int(value * W)
        elif name == "TranslateY":
            value = int(value * H)
        ops.append((name, value))
    size = min(W, H) // 3
    cx, cy = np_rng.uniform(0, W), np_rng.uniform(0, H)
    x0, y0 = int(max(0.0, cx - size / 2.0)), int(max(0.0, cy - size / 2.0))
    cutout = (x0, y0, int(min(W, x0 + size)), int(min(H, y0 + size)))
    return StrongParams(hflip=hflip, ops=ops, cutout=cutout)


def apply_strong(img: Image.Image, params: StrongParams) -> Image.Image:
    """Replay a strong view on a PIL image: flip, the applied ops in order, grey cutout."""
    if params.hflip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for name, value in params.ops:
        if value is not None:
            img = _APPLY[name](img, value)
    img = img.copy()
    ImageDraw.Draw(img).rectangle(params.cutout, fill=_grey(img))
    return img


def strong_augment(img: Image.Image, rng: random.Random, np_rng: np.random.RandomState,
                   n: int = 2, m: int = 10) -> tuple[Image.Image, StrongParams]:
    """RandAugmentMC(n, m) of ``img`` (§3.2): the strong image and its parameters."""
    params = sample_strong_params(rng, np_rng, img.size, n, m)
    return apply_strong(img, params), params


# ------------------------------------------------------------- maps into the strong view (§3.3)
def _theta(name: str, v: float, h: int, w: int, parity: bool) -> list[list[float]]:
    """The normalised 2×3 sampling matrix of one op on an h×w map (§3.3)."""
    if name == "Rotate":
        a = math.radians(v)
        th = [[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]]
    else:
        th = {"ShearX": [[1.0, v, 0.0], [0.0, 1.0, 0.0]],
              "ShearY": [[1.0, 0.0, 0.0], [v, 1.0, 0.0]],
              "TranslateX": [[1.0, 0.0, v], [0.0, 1.0, 0.0]],
              "TranslateY": [[1.0, 0.0, 0.0], [0.0, 1.0, v]]}[name]
    th[0][1] *= h / w
    th[1][0] *= w / h
    if name != "Rotate":  # origin at the top-left corner, pixels → normalised units
        x_norm = h if parity else w  # Q6: the official code divides x offsets by H
        th[0][2] = th[0][2] * 2 / x_norm + th[0][0] + th[0][1] - 1
        th[1][2] = th[1][2] * 2 / h + th[1][0] + th[1][1] - 1
    return th


def _affine_sample(t: torch.Tensor, name: str, v: float, parity: bool) -> torch.Tensor:
    """Resample a 1×K×h×w map as the image op ``name`` with value ``v`` (nearest, zeros)."""
    theta = torch.tensor([_theta(name, v, t.shape[-2], t.shape[-1], parity)],
                         dtype=t.dtype, device=t.device)
    grid = F.affine_grid(theta, list(t.shape), align_corners=False)
    return F.grid_sample(t, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _geometric_steps(p: StrongParams, parity: bool) -> list[tuple[str, float]]:
    """Applied geometric ops: in sampled order, or (parity, Q7) fixed order, last value wins."""
    applied = [(n, v) for n, v in p.ops if v is not None and n in GEOMETRIC_OPS]
    if not parity:
        return applied
    last = dict(applied)
    return [(n, last[n]) for n in GEOMETRIC_OPS if n in last]


def _replay(t: torch.Tensor, p: StrongParams, scale: int, parity: bool) -> torch.Tensor:
    """Flip, geometric ops and cutout (set to 0 = empty) on a 1×K×h×w map."""
    if p.hflip:
        t = t.flip(-1)
    for name, value in _geometric_steps(p, parity):
        v = int(value // scale) if name.startswith("Translate") else float(value)
        t = _affine_sample(t, name, v, parity)
    x0, y0, x1, y1 = p.cutout
    t[..., y0 // scale:y1 // scale, x0 // scale:x1 // scale] = 0
    return t


def label_strong_T(maps: torch.Tensor, params: Sequence[StrongParams], padding: float = IGNORE_INDEX,
                   scale: int = 4, parity: bool = False) -> torch.Tensor:
    """Move N×K×h×w maps (labels, distances) at 1/``scale`` crop resolution into the strong view.

    Out-of-frame pixels and the cutout become ``padding``. ``parity=True`` replays the official
    fixed op order with last-value-wins (Q7) and the H-normalised TranslateX (Q6).
    """
    if maps.dim() != 4:
        raise ValueError(f"label_strong_T expects N×K×h×w maps, got shape {tuple(maps.shape)}")
    if len(params) != maps.shape[0]:
        raise ValueError(f"label_strong_T got {len(params)} params for a batch of {maps.shape[0]}")
    work = maps if maps.dtype in (torch.float32, torch.float64) else maps.float()
    shifted = work + 1  # 0 now marks "empty"
    out = torch.cat([_replay(shifted[i:i + 1], p, scale, parity) for i, p in enumerate(params)])
    out = torch.where(out == 0, torch.full_like(out, padding + 1), out) - 1
    return out.to(maps.dtype)


# ---------------------------------------------------------- full image into weak view (§3.4)
def full2weak(feat: torch.Tensor, params: Sequence[WeakParams], scale: int = 4) -> torch.Tensor:
    """Move N×D×h×w full-image maps (at full/``scale``) into each sample's weak view.

    Per sample: bilinear-AC resize to ``(int(h/scale), int(w/scale))`` of its resized size,
    crop ``[int(y1/scale), +int((y2-y1)/scale))`` (same for x), flip.
    """
    if feat.dim() != 4 or len(params) != feat.shape[0]:
        raise ValueError(f"full2weak expects N×D×h×w with N params, got {tuple(feat.shape)} "
                         f"and {len(params)} params")
    outs = []
    for f, p in zip(feat, params):
        h, w = p.resized_hw
        f = F.interpolate(f[None], size=(int(h / scale), int(w / scale)), mode="bilinear",
                          align_corners=True)[0]
        y1, y2, x1, x2 = p.crop
        r0, c0 = int(y1 / scale), int(x1 / scale)
        f = _crop_tensor(f, (r0, r0 + int((y2 - y1) / scale), c0, c0 + int((x2 - x1) / scale)), 0.0)
        outs.append(f.flip(-1) if p.flip else f)
    return torch.stack(outs)
