"""Toy-city benchmark: a deterministic synthetic street-scene domain-shift pair in real layouts.

The source is written in the GTA5 layout (``gta5/images|labels/NNNNN.png`` + ``split.mat``,
the default) or in the SYNTHIA-RAND-CITYSCAPES layout (``synthia/RGB|GT/LABELS/NNNNNNN.png``,
``source_layout="synthia"``), the target in the Cityscapes layout
(``cityscapes/leftImg8bit|gtFine/{train,val}/<city>/…``). GTA5 and Cityscapes label maps hold
Cityscapes label ids, including void ids (parking, static, dynamic, unlabeled; the target also
has the ego vehicle and out-of-roi borders) that map to 250. SYNTHIA labels are 16-bit
3-channel PNGs whose RGB channel 0 holds the same scene's classes as SYNTHIA class ids
(:data:`CITYSCAPES_TO_SYNTHIA`; parking becomes SYNTHIA's parking slot, the voids SYNTHIA's
void 0), channel 1 a per-object instance id (0 on stuff classes) and channel 2 zero. The
source scenes are the same in both layouts for a given seed and options, so their 19-class
train-id maps agree.

Both domains share the scene grammar (sky, buildings with windows, trees, a perspective road
with lane marks, sidewalks, terrain, walls, fences, poles with signs and lights, cars, persons,
rare buses, trucks and riders on bicycles or motorcycles), so shapes, layout and the relative
colour structure transfer. The target differs by a controlled shift: a hue-shifted,
desaturated palette (overcast sky, lighter asphalt), stronger material textures, a per-image
brightness gradient and gamma, blur and sensor noise, and smaller but more numerous objects.

Every image draws from its own ``SeedSequence([seed, domain, split, index])``, so the output
is byte-identical for a given seed and options.
"""
from __future__ import annotations

import colorsys
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple, Sequence

import cv2
import numpy as np
import scipy.io
from PIL import Image

FORMAT_VERSION = 2  # 2: thin objects (poles, signs, lights, two-wheelers, people) drawn wider
MANIFEST = "toycity.json"
SOURCE_LAYOUTS = ("gta5", "synthia")
TRAIN_CITIES = ("toyburg", "pixelheim")
VAL_CITIES = ("voxelstadt",)

# Cityscapes label ids used by the scenes.
ID = dict(unlabeled=0, ego=1, out_of_roi=3, static=4, dynamic=5, road=7, sidewalk=8, parking=9,
          building=11, wall=12, fence=13, pole=17, light=19, sign=20, vegetation=21, terrain=22,
          sky=23, person=24, rider=25, car=26, truck=27, bus=28, motorcycle=32, bicycle=33)
# Classes whose pixels carry a per-object instance id in SYNTHIA-layout labels (others: 0).
THINGS = frozenset({"person", "rider", "car", "truck", "bus", "motorcycle", "bicycle"})
# Cityscapes label id (as painted) → SYNTHIA class id (docs/method.md §2.2): parking becomes
# SYNTHIA's parking slot (void in both 19/16/13-class lists), the void ids SYNTHIA's void 0.
CITYSCAPES_TO_SYNTHIA: dict[int, int] = {
    0: 0, 1: 0, 3: 0, 4: 0, 5: 0, 7: 3, 8: 4, 9: 13, 11: 2, 12: 21, 13: 5, 17: 7, 19: 15, 20: 9,
    21: 6, 22: 16, 23: 1, 24: 10, 25: 17, 26: 8, 27: 18, 28: 19, 32: 12, 33: 11}

RGB = tuple[float, float, float]
SOURCE_PALETTE: dict[str, RGB] = {
    "sky": (90, 160, 250), "window": (60, 80, 130), "wall": (185, 175, 150),
    "fence": (140, 105, 60), "vegetation": (40, 150, 40), "trunk": (100, 70, 40),
    "terrain": (130, 190, 60), "road": (85, 85, 95), "lane": (240, 240, 240),
    "sidewalk": (190, 150, 170), "parking": (125, 110, 125), "pole": (70, 70, 80),
    "sign": (235, 200, 30), "sign_alt": (40, 90, 220), "light": (35, 35, 35),
    "lamp_red": (235, 40, 40), "lamp_green": (40, 220, 90), "skin": (230, 185, 150),
    "car_window": (45, 55, 80), "wheel": (20, 20, 20), "bus": (225, 180, 20),
    "truck": (205, 205, 215), "truck_cab": (40, 80, 190), "bicycle": (200, 40, 160),
    "motorcycle": (60, 60, 70), "static": (150, 150, 100), "dynamic": (90, 130, 90),
    "ego": (40, 40, 50), "unlabeled": (120, 90, 140),
}
SOURCE_BUILDINGS: tuple[RGB, ...] = ((175, 95, 70), (205, 180, 140), (120, 120, 150), (155, 110, 90))
SOURCE_VEHICLES: tuple[RGB, ...] = ((225, 30, 30), (30, 60, 205), (240, 240, 240), (30, 30, 30),
                                    (240, 200, 20), (30, 165, 60), (160, 160, 170))
SOURCE_CLOTHES: tuple[RGB, ...] = ((200, 40, 40), (40, 40, 160), (230, 150, 30), (60, 60, 60),
                                   (160, 40, 170), (30, 140, 140))


def shift_colour(rgb: RGB, hue: float, sat: float, val: float) -> RGB:
    """Rotate the hue by ``hue`` turns and scale saturation and value (a palette-level shift)."""
    h, s, v = colorsys.rgb_to_hsv(*(c / 255.0 for c in rgb))
    r, g, b = colorsys.hsv_to_rgb((h + hue) % 1.0, min(1.0, s * sat), min(1.0, v * val))
    return (r * 255.0, g * 255.0, b * 255.0)


@dataclass(frozen=True)
class Style:
    """Appearance and object statistics of one domain."""

    palette: dict[str, RGB]
    buildings: tuple[RGB, ...]
    vehicles: tuple[RGB, ...]
    clothes: tuple[RGB, ...]
    jitter: float = 0.06               # per-object colour jitter (fraction)
    texture: float = 0.03              # amplitude of the material textures
    noise: float = 1.5                 # sensor noise std (0..255 scale)
    blur: bool = False
    gamma: tuple[float, float] = (1.0, 1.0)
    gradient: float = 0.0              # max brightness slope across the image
    horizon: tuple[float, float] = (0.40, 0.50)   # fraction of H
    car_scale: tuple[float, float] = (0.9, 1.3)
    n_cars: tuple[int, int] = (2, 5)
    person_scale: tuple[float, float] = (0.9, 1.2)
    n_persons: tuple[int, int] = (1, 3)
    ego: bool = False
    void_objects: tuple[str, ...] = ("static", "dynamic", "unlabeled")


def _target_style(src: Style) -> Style:
    def shift(c: RGB) -> RGB:
        return shift_colour(c, hue=-0.04, sat=0.5, val=0.88)

    palette = {k: shift(c) for k, c in src.palette.items()}
    palette.update(sky=(175, 185, 195), road=(122, 120, 116))  # overcast sky, lighter asphalt
    return replace(src, palette=palette, buildings=tuple(map(shift, src.buildings)),
                   vehicles=tuple(map(shift, src.vehicles)), clothes=tuple(map(shift, src.clothes)),
                   jitter=0.1, texture=0.14, noise=5.0, blur=True, gamma=(1.1, 1.5), gradient=0.35,
                   horizon=(0.36, 0.46), car_scale=(0.55, 0.9), n_cars=(3, 7),
                   person_scale=(0.7, 1.0), n_persons=(2, 5), ego=True, void_objects=("static", "dynamic"))


SOURCE_STYLE = Style(SOURCE_PALETTE, SOURCE_BUILDINGS, SOURCE_VEHICLES, SOURCE_CLOTHES)
TARGET_STYLE = _target_style(SOURCE_STYLE)


# ---------------------------------------------------------------------------- drawing
class Region(NamedTuple):
    """A mask over the pixel box ``[ys, xs]`` of a canvas."""

    ys: slice
    xs: slice
    m: np.ndarray


class Canvas:
    """An H×W label-id map and float RGB image painted in layers (later layers occlude)."""

    def __init__(self, w: int, h: int, rng: np.random.Generator, style: Style) -> None:
        self.w, self.h, self.rng, self.style = w, h, rng, style
        self.yy, self.xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
        self.ids = np.zeros((h, w), np.uint8)
        self.inst = np.zeros((h, w), np.uint16)   # per-object instance ids on THINGS pixels
        self.instance = 0                          # id of the object being drawn
        self.rgb = np.zeros((h, w, 3), np.float32)
        fine = rng.standard_normal((h, w)).astype(np.float32)
        coarse = rng.standard_normal((h // 6 + 1, w // 6 + 1)).astype(np.float32)
        coarse = np.repeat(np.repeat(coarse, 6, 0), 6, 1)[:h, :w]
        streaks = np.repeat(rng.standard_normal((1, w)).astype(np.float32), h, 0)
        amp = style.texture
        self.tex = {"flat": 1 + 0.3 * amp * fine, "rough": 1 + amp * (0.6 * fine + 0.8 * coarse),
                    "streaks": 1 + amp * (0.4 * fine + 0.8 * streaks)}

    def colour(self, key: str | RGB, jitter: bool = True) -> np.ndarray:
        base = np.asarray(self.style.palette[key] if isinstance(key, str) else key, np.float32)
        if jitter:
            base = base * (1 + self.style.jitter * self.rng.uniform(-1, 1, 3)).astype(np.float32)
        return base

    def paint(self, region: Region, label: str, colour: np.ndarray, tex: str = "flat") -> None:
        ys, xs, m = region
        self.ids[ys, xs][m] = ID[label]
        self.inst[ys, xs][m] = self.instance if label in THINGS else 0
        self.rgb[ys, xs][m] = colour * self.tex[tex][ys, xs][m][:, None]

    def new_instance(self) -> None:
        """Start a new object: THINGS pixels painted from now on get the next instance id."""
        self.instance += 1

    def full(self, mask: np.ndarray) -> Region:
        return Region(slice(0, self.h), slice(0, self.w), mask)

    def box(self, x0: float, y0: float, x1: float, y1: float) -> tuple[slice, slice]:
        """Pixel slices of the pixels whose centres lie in [x0, x1) × [y0, y1)."""
        def span(a: float, b: float, n: int) -> slice:
            lo = min(max(int(np.ceil(a - 0.5)), 0), n)
            return slice(lo, min(max(int(np.ceil(b - 0.5)), lo), n))
        return span(y0, y1, self.h), span(x0, x1, self.w)

    def rect(self, x0: float, y0: float, x1: float, y1: float) -> Region:
        ys, xs = self.box(x0, y0, x1, y1)
        return Region(ys, xs, np.ones((ys.stop - ys.start, xs.stop - xs.start), bool))

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, inner: float = 0.0) -> Region:
        """Filled ellipse, or a ring when ``inner`` (a fraction of the radii) is > 0."""
        rx, ry = max(rx, 0.5), max(ry, 0.5)
        ys, xs = self.box(cx - rx, cy - ry, cx + rx + 1, cy + ry + 1)
        d = ((self.xx[ys, xs] - cx) / rx) ** 2 + ((self.yy[ys, xs] - cy) / ry) ** 2
        return Region(ys, xs, (d <= 1) & (d >= inner ** 2))


@dataclass
class Street:
    """Perspective ground: row ``y(t) = hz + t (H - hz)``, lateral offsets linear in ``t``."""

    hz: float
    vx: float
    h: int
    w: int
    road: tuple[float, float]   # half-width slopes (left, right), fractions of W per unit t
    walk: float                 # sidewalk width slope

    def y(self, t: float) -> float:
        return self.hz + t * (self.h - self.hz)

    def road_edge(self, t, side: int):
        return self.vx + side * self.w * (0.01 + self.road[1 if side > 0 else 0] * t)

    def walk_edge(self, t, side: int):
        return self.road_edge(t, side) + side * self.w * (0.004 + self.walk * t)

    def t_of_walk_edge(self, x: np.ndarray, side: int) -> np.ndarray:
        """Inverse of :meth:`walk_edge`: depth ``t`` whose outer sidewalk edge is at column x."""
        return (side * (x - self.vx) / self.w - 0.014) / (self.road[1 if side > 0 else 0] + self.walk)


def _sky_and_buildings(c: Canvas, st: Street) -> None:
    grad = 0.8 + 0.3 * np.clip(c.yy / st.hz, 0, 1)[..., None]
    c.paint(c.full(np.ones_like(c.ids, bool)), "sky", c.colour("sky"))
    c.rgb *= grad
    x = -c.rng.uniform(0, 0.1) * c.w
    while x < c.w:
        bw = c.w * c.rng.uniform(0.08, 0.2)
        far = 0.35 + 0.65 * min(1.0, abs(x + bw / 2 - st.vx) / (c.w / 2))
        top = st.hz - c.h * c.rng.uniform(0.12, 0.45) * far
        if c.rng.random() < 0.2:  # a tree mass instead of a block
            c.paint(c.ellipse(x + bw / 2, top + 0.3 * (st.hz - top), bw * 0.7, st.hz - top), "vegetation",
                    c.colour("vegetation"), "rough")
        else:
            block = c.rect(x, top, x + bw, st.hz + 0.04 * c.h)
            c.paint(block, "building", c.colour(c.style.buildings[c.rng.integers(len(c.style.buildings))]),
                    "streaks")
            px, py = c.rng.uniform(4, 8), c.rng.uniform(4, 8)
            ys, xs, _ = block
            bx, by = c.xx[ys, xs], c.yy[ys, xs]
            win = ((bx - x) % px < px * 0.5) & ((by - top) % py < py * 0.45) \
                & (by > top + 2) & (bx > x + 1) & (bx < x + bw - 1) & (by < st.hz - 1)
            c.rgb[ys, xs][win] = c.colour("window") * c.tex["flat"][ys, xs][win][:, None]
        x += bw


def _ground(c: Canvas, st: Street) -> None:
    below = c.yy >= st.hz
    t = np.clip((c.yy - st.hz) / (c.h - st.hz), 0, 1)
    c.paint(c.full(below), "terrain", c.colour("terrain"), "rough")
    left, right = c.xx < st.vx, c.xx >= st.vx
    walk = below & ((left & (c.xx >= st.walk_edge(t, -1))) | (right & (c.xx < st.walk_edge(t, 1))))
    c.paint(c.full(walk), "sidewalk", c.colour("sidewalk"), "flat")
    road = below & (c.xx >= st.road_edge(t, -1)) & (c.xx < st.road_edge(t, 1))
    c.paint(c.full(road), "road", c.colour("road"), "rough")
    if c.rng.random() < 0.4:  # a parking bay at the road side (void)
        side, t0 = c.rng.choice([-1, 1]), c.rng.uniform(0.3, 0.7)
        edge = st.road_edge(t, side)
        bay = road & (t > t0) & (t < t0 + 0.2) & (np.abs(c.xx - edge) < c.w * 0.06 * t)
        c.paint(c.full(bay), "parking", c.colour("parking"), "rough")
    dist = 1.0 / (t + 0.05)
    lane = road & (np.abs(c.xx - st.vx) < c.w * (0.002 + 0.01 * t)) & ((dist * 0.8) % 1 < 0.5)
    c.paint(c.full(lane), "road", c.colour("lane", jitter=False), "flat")


def _roadside_bands(c: Canvas, st: Street) -> None:
    """Walls and fences standing on the outer sidewalk edge."""
    for side in (-1, 1):
        if c.rng.random() < 0.7:
            kind = "wall" if c.rng.random() < 0.5 else "fence"
            t = st.t_of_walk_edge(c.xx, side)
            t0, t1 = np.sort(c.rng.uniform(0.15, 1.2, 2))
            base = st.y(t)
            height = c.h * c.rng.uniform(0.12, 0.25) * t
            band = (t > t0) & (t < t1) & (c.yy <= base) & (c.yy > base - height)
            c.paint(c.full(band), kind, c.colour(kind), "streaks" if kind == "wall" else "flat")
            if kind == "fence":
                slats = band & ((c.xx // 2) % 2 == 0)
                c.rgb[slats] *= 0.7


def _tree(c: Canvas, st: Street, t: float, side: int) -> None:
    x, yb = st.walk_edge(t, side) - side * 0.3 * c.w * (0.004 + st.walk * t), st.y(t)
    s = t * c.h
    c.paint(c.rect(x - 0.015 * s, yb - 0.5 * s, x + 0.015 * s, yb), "vegetation", c.colour("trunk"))
    c.paint(c.ellipse(x, yb - 0.6 * s, 0.22 * s, 0.2 * s), "vegetation", c.colour("vegetation"), "rough")


def _pole(c: Canvas, st: Street, t: float, side: int) -> None:
    x, yb, s = st.road_edge(t, side) + side * 0.5 * c.w * (0.004 + st.walk * t), st.y(t), t * c.h
    top = yb - 0.75 * s
    pw = max(1.0, 0.03 * s)
    c.paint(c.rect(x - pw, top, x + pw, yb), "pole", c.colour("pole"))
    kind = c.rng.random()
    if kind < 0.45:  # traffic sign: a disc or a plate on top
        key = "sign" if c.rng.random() < 0.6 else "sign_alt"
        r = max(1.5, 0.09 * s)
        shape = c.ellipse(x, top, r, r) if c.rng.random() < 0.5 else c.rect(x - r, top - r, x + r, top + r * 0.8)
        c.paint(shape, "sign", c.colour(key))
    elif kind < 0.8:  # traffic light: a box with one lit lamp
        bw, bh = max(1.5, 0.05 * s), max(3.0, 0.15 * s)
        c.paint(c.rect(x - bw, top - bh, x + bw, top + bh * 0.2), "light", c.colour("light"))
        lamp = "lamp_red" if c.rng.random() < 0.5 else "lamp_green"
        cy = top - bh * (0.7 if lamp == "lamp_red" else 0.15)
        c.paint(c.ellipse(x, cy, bw * 0.6, bw * 0.6), "light", c.colour(lamp, jitter=False))


def _vehicle(c: Canvas, st: Street, t: float, u: float, scale: float) -> None:
    """A car (usually), bus or truck at depth ``t`` and lane position ``u`` in [-1, 1]."""
    c.new_instance()
    xc = st.vx + u * c.w * (0.01 + 0.5 * sum(st.road) * t)
    yb, kind = st.y(t), c.rng.random()
    kind = "bus" if kind < 0.06 else "truck" if kind < 0.12 else "car"
    cw = c.w * 0.3 * t * scale * (1.6 if kind != "car" else 1.0)
    ch = cw * (0.95 if kind != "car" else 0.6)
    body_col = c.colour("bus") if kind == "bus" else c.colour("truck") if kind == "truck" \
        else c.colour(c.style.vehicles[c.rng.integers(len(c.style.vehicles))])
    if kind == "car":
        c.paint(c.rect(xc - cw / 2, yb - 0.62 * ch, xc + cw / 2, yb - 0.15 * ch), "car", body_col)
        c.paint(c.rect(xc - 0.36 * cw, yb - ch, xc + 0.36 * cw, yb - 0.6 * ch), "car", body_col)
        c.paint(c.rect(xc - 0.3 * cw, yb - 0.93 * ch, xc + 0.3 * cw, yb - 0.64 * ch), "car",
                c.colour("car_window"))
    elif kind == "bus":
        c.paint(c.rect(xc - cw / 2, yb - ch, xc + cw / 2, yb - 0.1 * ch), "bus", body_col)
        c.paint(c.rect(xc - 0.45 * cw, yb - 0.85 * ch, xc + 0.45 * cw, yb - 0.55 * ch), "bus",
                c.colour("car_window"))
    else:
        c.paint(c.rect(xc - cw / 2, yb - ch, xc + 0.2 * cw, yb - 0.12 * ch), "truck", body_col)
        c.paint(c.rect(xc + 0.2 * cw, yb - 0.7 * ch, xc + cw / 2, yb - 0.12 * ch), "truck",
                c.colour("truck_cab"))
    for dx in (-0.32, 0.32):
        c.paint(c.ellipse(xc + dx * cw, yb - 0.1 * ch, 0.1 * cw, 0.1 * ch + 0.5), kind, c.colour("wheel"))


def _person(c: Canvas, x: float, yb: float, height: float, label: str = "person") -> None:
    c.new_instance()
    clothes = c.colour(c.style.clothes[c.rng.integers(len(c.style.clothes))])
    wd = max(1.0, 0.2 * height)
    c.paint(c.rect(x - wd * 0.8, yb - 0.45 * height, x - wd * 0.1, yb), label, c.colour("wheel"))
    c.paint(c.rect(x + wd * 0.1, yb - 0.45 * height, x + wd * 0.8, yb), label, c.colour("wheel"))
    c.paint(c.ellipse(x, yb - 0.65 * height, wd, 0.25 * height), label, clothes)
    c.paint(c.ellipse(x, yb - 0.92 * height, wd * 0.6, 0.09 * height + 0.3), label, c.colour("skin"))


def _pedestrian(c: Canvas, st: Street, t: float, side: int, frac: float, scale: float) -> None:
    """A person on the sidewalk, ``frac`` of the way from the kerb to its outer edge."""
    x = st.road_edge(t, side) + side * frac * c.w * (0.004 + st.walk * t)
    _person(c, x, st.y(t), 0.55 * scale * t * c.h)


def _two_wheeler(c: Canvas, st: Street, t: float, side: int) -> None:
    """A rider on a bicycle or a motorcycle near the road edge."""
    c.new_instance()  # the vehicle; its rider is an instance of its own
    x, yb, s = st.road_edge(t, side) - side * 0.08 * c.w * t, st.y(t), t * c.h
    kind = "bicycle" if c.rng.random() < 0.6 else "motorcycle"
    r = 0.12 * s
    for dx in (-1.2 * r, 1.2 * r):
        c.paint(c.ellipse(x + dx, yb - r, r, r, inner=0.6 if kind == "bicycle" else 0.0), kind, c.colour(kind))
    c.paint(c.rect(x - 1.2 * r, yb - 1.4 * r, x + 1.2 * r, yb - 0.9 * r), kind, c.colour(kind))
    _person(c, x, yb - 1.1 * r, 0.55 * s, label="rider")


def _void_object(c: Canvas, st: Street, t: float, side: int) -> None:
    """A bin or box on the sidewalk, labelled with a void id."""
    kind = c.style.void_objects[c.rng.integers(len(c.style.void_objects))]
    x, yb, s = st.walk_edge(t, side) - side * 0.4 * c.w * (0.004 + st.walk * t), st.y(t), t * c.h
    c.paint(c.rect(x - 0.04 * s, yb - 0.12 * s, x + 0.04 * s, yb), kind, c.colour(kind))


def _ego(c: Canvas) -> None:
    eh = c.h * c.rng.uniform(0.06, 0.1)
    hood = c.yy > c.h - eh * np.clip(1 - ((c.xx - c.w / 2) / (0.7 * c.w)) ** 2, 0, 1)
    c.paint(c.full(hood), "ego", c.colour("ego"))
    border = (c.xx < 1) | (c.xx > c.w - 1)
    c.ids[border] = ID["out_of_roi"]


def _finish(c: Canvas) -> np.ndarray:
    """Domain photometry: brightness gradient, gamma, blur, sensor noise → uint8 RGB."""
    st, rng = c.style, c.rng
    img = c.rgb * (1 + rng.uniform(-st.gradient, st.gradient) * (c.xx / c.w - 0.5))[..., None]
    img = 255.0 * (np.clip(img, 0, 255) / 255.0) ** rng.uniform(*st.gamma)
    if st.blur:
        p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
        img = (p[:-2] + 2 * p[1:-1] + p[2:]) / 4
        img = (img[:, :-2] + 2 * img[:, 1:-1] + img[:, 2:]) / 4
    img = img + rng.normal(0, st.noise, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render(rng: np.random.Generator, size: tuple[int, int], style: Style) -> tuple[np.ndarray, np.ndarray]:
    """One scene at ``size`` (W, H): (H×W×3 uint8 RGB, H×W uint8 Cityscapes label ids)."""
    img, ids, _ = render_instances(rng, size, style)
    return img, ids


def render_instances(rng: np.random.Generator, size: tuple[int, int],
                     style: Style) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`render` plus an H×W uint16 instance map (1, 2, … per object on THINGS pixels,
    0 elsewhere); it draws the same random numbers, so image and ids are those of render."""
    w, h = size
    c = Canvas(w, h, rng, style)
    st = Street(hz=h * rng.uniform(*style.horizon), vx=w * rng.uniform(0.4, 0.6), h=h, w=w,
                road=(rng.uniform(0.45, 0.7), rng.uniform(0.45, 0.7)), walk=rng.uniform(0.15, 0.3))
    _sky_and_buildings(c, st)
    _ground(c, st)
    _roadside_bands(c, st)
    # Roadside and road objects, far to near so that nearer ones occlude.
    objects = [(t, _tree, (rng.choice([-1, 1]),)) for t in rng.uniform(0.15, 0.9, rng.integers(1, 4))]
    objects += [(t, _pole, (rng.choice([-1, 1]),)) for t in rng.uniform(0.15, 1.0, rng.integers(2, 5))]
    objects += [(t, _void_object, (rng.choice([-1, 1]),)) for t in rng.uniform(0.2, 0.9, rng.integers(0, 3))]
    lo, hi = style.n_cars
    objects += [(t, _vehicle, (rng.uniform(-0.85, 0.85), rng.uniform(*style.car_scale)))
                for t in rng.uniform(0.12, 0.95, rng.integers(lo, hi + 1))]
    lo, hi = style.n_persons
    objects += [(t, _pedestrian, (rng.choice([-1, 1]), rng.uniform(0.2, 0.8), rng.uniform(*style.person_scale)))
                for t in rng.uniform(0.15, 0.95, rng.integers(lo, hi + 1))]
    if rng.random() < 0.5:
        objects.append((rng.uniform(0.3, 0.9), _two_wheeler, (rng.choice([-1, 1]),)))
    for t, draw, args in sorted(objects, key=lambda o: o[0]):
        draw(c, st, float(t), *(int(a) if isinstance(a, np.integer) else float(a) for a in args))
    if style.ego:
        _ego(c)
    return _finish(c), c.ids, c.inst


# ---------------------------------------------------------------------------- writing
CITYSCAPES_ID_COLOURS = {0: (0, 0, 0), 7: (128, 64, 128), 8: (244, 35, 232), 11: (70, 70, 70),
                         12: (102, 102, 156), 13: (190, 153, 153), 17: (153, 153, 153),
                         19: (250, 170, 30), 20: (220, 220, 0), 21: (107, 142, 35),
                         22: (152, 251, 152), 23: (70, 130, 180), 24: (220, 20, 60), 25: (255, 0, 0),
                         26: (0, 0, 142), 27: (0, 0, 70), 28: (0, 60, 100), 32: (0, 0, 230),
                         33: (119, 11, 32)}


def _gta5_palette() -> list[int]:
    """Palette of the GTA5 label PNGs (mode P, index = Cityscapes id); unlisted ids are black."""
    return [v for i in range(256) for v in CITYSCAPES_ID_COLOURS.get(i, (0, 0, 0))]


def _save_png(path: Path, arr: np.ndarray, palette: list[int] | None = None) -> None:
    im = Image.fromarray(arr)
    if palette is not None:
        im.putpalette(palette)
    im.save(path, format="PNG", compress_level=3)


def _save_split_mat(path: Path, n: int) -> None:
    """GTA5 ``split.mat`` with column vectors trainIds/valIds/testIds (1-based) summing to n.

    scipy stamps the creation time into the 116-byte header text; it is replaced by a fixed
    text so that the file is byte-identical across runs.
    """
    n_val = n_test = n // 4
    ids = np.arange(1, n + 1, dtype=np.float64)[:, None]
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"trainIds": ids[: n - n_val - n_test], "valIds": ids[n - n_val - n_test: n - n_test],
                           "testIds": ids[n - n_test:]})
    data = bytearray(buf.getvalue())
    data[:116] = b"MATLAB 5.0 MAT-file, toy-city benchmark".ljust(116, b" ")
    path.write_bytes(bytes(data))


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


def relight(img: np.ndarray, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """Per-image lighting of a uint8 RGB image: brightness, contrast and saturation factors, each
    drawn from U(1 − amplitude, 1) and applied as PIL's ``ImageEnhance`` does (colour, then
    contrast about the mean grey, then brightness). ``amplitude`` 0 returns ``img`` unchanged."""
    if amplitude == 0:
        return img
    colour, contrast, brightness = rng.uniform(1 - amplitude, 1, 3)
    x = img.astype(np.float32)
    grey = x @ np.float32([0.299, 0.587, 0.114])
    x = grey[..., None] + colour * (x - grey[..., None])
    x = grey.mean() + contrast * (x - grey.mean())
    return np.clip(np.rint(brightness * x), 0, 255).astype(np.uint8)


def _write_source(root: Path, seed: int, n: int, size: tuple[int, int], lighting: float = 0.0) -> None:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    palette = _gta5_palette()
    for i in range(1, n + 1):
        img, ids = render(_rng(seed, 0, 0, i), size, SOURCE_STYLE)
        img = relight(img, _rng(seed, 0, 2, i), lighting)
        _save_png(root / "images" / f"{i:05d}.png", img)
        _save_png(root / "labels" / f"{i:05d}.png", ids, palette)
    _save_split_mat(root / "split.mat", n)


def synthia_label(ids: np.ndarray, inst: np.ndarray) -> np.ndarray:
    """H×W Cityscapes label ids + instance ids → H×W×3 uint16 SYNTHIA label in OpenCV's BGR
    order (RGB channel 0 = SYNTHIA class id, channel 1 = instance id, channel 2 = 0)."""
    lut = np.full(256, -1, np.int32)
    lut[list(CITYSCAPES_TO_SYNTHIA)] = list(CITYSCAPES_TO_SYNTHIA.values())
    cls = lut[ids]
    if (cls < 0).any():
        raise ValueError(f"Cityscapes ids without a SYNTHIA class: {sorted(set(np.unique(ids[cls < 0]).tolist()))}")
    bgr = np.zeros(ids.shape + (3,), np.uint16)
    bgr[..., 2] = cls
    bgr[..., 1] = inst
    return bgr


def _write_source_synthia(root: Path, seed: int, n: int, size: tuple[int, int], lighting: float = 0.0) -> None:
    """SYNTHIA-RAND-CITYSCAPES layout: ``RGB/NNNNNNN.png`` (8-bit RGB) + ``GT/LABELS/NNNNNNN.png``
    (16-bit 3-channel); scene ``i`` is the GTA5 layout's ``NNNNN.png`` of the same seed."""
    (root / "RGB").mkdir(parents=True)
    (root / "GT" / "LABELS").mkdir(parents=True)
    for i in range(1, n + 1):
        img, ids, inst = render_instances(_rng(seed, 0, 0, i), size, SOURCE_STYLE)
        _save_png(root / "RGB" / f"{i:07d}.png", relight(img, _rng(seed, 0, 2, i), lighting))
        path = root / "GT" / "LABELS" / f"{i:07d}.png"
        if not cv2.imwrite(str(path), synthia_label(ids, inst), [cv2.IMWRITE_PNG_COMPRESSION, 3]):
            raise OSError(f"cannot write SYNTHIA label {path}")


def _write_target(root: Path, seed: int, split: str, n: int, size: tuple[int, int]) -> None:
    cities = TRAIN_CITIES if split == "train" else VAL_CITIES
    for i in range(n):
        city, seq = cities[i % len(cities)], i // len(cities)
        stem = f"{city}_{seq:06d}_000019_"
        img, ids = render(_rng(seed, 1, 0 if split == "train" else 1, i), size, TARGET_STYLE)
        for sub, name, arr in (("leftImg8bit", "leftImg8bit", img), ("gtFine", "gtFine_labelIds", ids)):
            folder = root / sub / split / city
            folder.mkdir(parents=True, exist_ok=True)
            _save_png(folder / f"{stem}{name}.png", arr)


def _check_size(name: str, size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2 or int(size[0]) < 32 or int(size[1]) < 16:
        raise ValueError(f"toy-city {name} must be (W, H) with W >= 32 and H >= 16, got {size!r}")
    return int(size[0]), int(size[1])


def _read_manifest(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _paths(out: Path, source_layout: str) -> dict[str, Path]:
    return {"source": out / source_layout, "target": out / "cityscapes"}


def generate(out_dir: str | os.PathLike, *, seed: int = 0, n_source: int = 200, n_target_train: int = 100,
             n_target_val: int = 40, source_size: Sequence[int] = (160, 88),
             target_size: Sequence[int] = (192, 96), source_layout: str = "gta5",
             source_lighting: float = 0.0) -> dict[str, Path]:
    """Write the benchmark to ``out_dir`` (``gta5/`` or ``synthia/``, ``cityscapes/``, ``toycity.json``).

    ``source_layout`` is ``"gta5"`` (GTA5 layout, Cityscapes ids) or ``"synthia"``
    (SYNTHIA-RAND-CITYSCAPES layout, SYNTHIA ids; same scenes, still at ``source_size``).
    ``source_lighting`` in [0, 1) varies each source image's lighting (:func:`relight`); 0 leaves
    the images as they were before the option existed.
    The tree is built in a temporary sibling folder and renamed into place. An existing
    benchmark with the same options (the layout included; a manifest without one is a GTA5-layout
    benchmark) is kept as is; one with other options is replaced; any other non-empty folder is
    refused. Returns ``{"source": out/<source_layout>, "target": out/cityscapes}``.
    """
    if source_layout not in SOURCE_LAYOUTS:
        raise ValueError(f"toy-city source_layout must be one of {', '.join(SOURCE_LAYOUTS)}, "
                         f"got {source_layout!r}")
    for name, n in (("n_source", n_source), ("n_target_train", n_target_train), ("n_target_val", n_target_val)):
        if int(n) < 1:
            raise ValueError(f"toy-city {name} must be >= 1, got {n!r}")
    params = {"version": FORMAT_VERSION, "seed": int(seed), "n_source": int(n_source),
              "n_target_train": int(n_target_train), "n_target_val": int(n_target_val),
              "source_size": list(_check_size("source_size", source_size)),
              "target_size": list(_check_size("target_size", target_size)),
              "source_layout": source_layout}
    if not 0 <= float(source_lighting) < 1:
        raise ValueError(f"toy-city source_lighting must be in [0, 1), got {source_lighting!r}")
    if source_lighting:  # absent from the manifest at 0, so earlier benchmarks stay valid
        params["source_lighting"] = float(source_lighting)
    out = Path(out_dir)
    if out.exists():
        manifest = out / MANIFEST
        old = _read_manifest(manifest)
        if isinstance(old, dict):
            old.setdefault("source_layout", "gta5")  # written before the option existed
        if old == params:
            return _paths(out, source_layout)
        if not manifest.is_file() and any(out.iterdir()):
            raise FileExistsError(f"{out} exists and is not a toy-city benchmark; refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)
        write_source = _write_source_synthia if source_layout == "synthia" else _write_source
        write_source(tmp / source_layout, params["seed"], params["n_source"], tuple(params["source_size"]),
                     float(source_lighting))
        for split in ("train", "val"):
            _write_target(tmp / "cityscapes", params["seed"], split, params[f"n_target_{split}"],
                          tuple(params["target_size"]))
        (tmp / MANIFEST).write_text(json.dumps(params, indent=1, sort_keys=True) + "\n")
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old", dir=out.parent))
            os.replace(out, old / "tree")
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _paths(out, source_layout)
