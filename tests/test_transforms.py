"""Weak / strong augmentation, label_strong_T and full2weak (docs/method.md §3, Appendix B)."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from proda.data.transforms import (StrongParams, WeakParams, apply_strong, apply_weak_label,
                                   apply_weak_pil, apply_weak_tensor, full2weak, label_strong_T,
                                   sample_weak_params, strong_augment)

torch.set_num_threads(1)

# ----------------------------------------------------------------------------- weak view


@pytest.mark.parametrize("seed", range(8))
def test_weak_params_follow_the_official_draw_order(seed):
    rng, twin = random.Random(seed), random.Random(seed)
    p = sample_weak_params(rng, (60, 40), resize_base=50, crop_wh=(20, 10))
    w = int(twin.uniform(0.5, 1.5) * 50)
    h = int(w / (60 / 40))
    x1 = twin.randint(0, w - 20)
    y1 = twin.randint(0, h - 10)
    flip = twin.random() < 0.5
    assert p == WeakParams(resized_hw=(h, w), crop=(y1, y1 + 10, x1, x1 + 20), flip=flip)
    assert rng.getstate() == twin.getstate()


def test_weak_params_when_the_resized_image_is_smaller_than_the_crop():
    # resize base 10 gives w in [5, 15) < crop width 16: always the "too small" branch (Q23)
    for seed in range(5):
        rng, twin = random.Random(seed), random.Random(seed)
        p = sample_weak_params(rng, (40, 20), resize_base=10, crop_wh=(16, 8))
        twin.uniform(0.5, 1.5)
        assert p == WeakParams(resized_hw=(8, 16), crop=(0, 8, 0, 16), flip=twin.random() < 0.5)
        rng, twin = random.Random(seed), random.Random(seed)
        p = sample_weak_params(rng, (40, 20), resize_base=10, crop_wh=(16, 8), small="pad")
        w = int(twin.uniform(0.5, 1.5) * 10)
        h = int(w / 2)
        assert twin.randint(0, 0) == 0 and twin.randint(0, 0) == 0
        assert p == WeakParams(resized_hw=(h, w), crop=(0, 8, 0, 16), flip=twin.random() < 0.5)
    with pytest.raises(ValueError, match="small"):
        sample_weak_params(random.Random(0), (40, 20), 10, (16, 8), small="grow")


def test_apply_weak_label_is_a_crop_and_flip_at_unchanged_size():
    label = np.arange(6 * 9, dtype=np.uint8).reshape(6, 9)
    p = WeakParams(resized_hw=(6, 9), crop=(1, 5, 2, 7), flip=True)
    assert np.array_equal(apply_weak_label(label, p), label[1:5, 2:7][:, ::-1])
    p = WeakParams(resized_hw=(6, 9), crop=(0, 3, 3, 9), flip=False)
    assert np.array_equal(apply_weak_label(label, p), label[0:3, 3:9])


def test_apply_weak_label_nearest_upscale_and_padding():
    label = np.array([[0, 1, 2], [3, 4, 5]], dtype=np.uint8)
    up = np.repeat(np.repeat(label, 2, axis=0), 2, axis=1)  # 4×6: exact 2× nearest
    p = WeakParams(resized_hw=(4, 6), crop=(1, 4, 1, 5), flip=False)
    assert np.array_equal(apply_weak_label(label, p), up[1:4, 1:5])
    # crop past the bottom/right edge: filled with 250 (pad mode)
    p = WeakParams(resized_hw=(4, 6), crop=(2, 6, 3, 8), flip=False)
    expected = np.full((4, 5), 250, dtype=np.uint8)
    expected[:2, :3] = up[2:4, 3:6]
    assert np.array_equal(apply_weak_label(label, p), expected)
    with pytest.raises(ValueError, match="uint8"):
        apply_weak_label(label.astype(np.int64), p)


def test_apply_weak_pil_image_crop_flip_and_zero_padding():
    arr = np.random.RandomState(0).randint(0, 256, (6, 8, 3)).astype(np.uint8)
    img = Image.fromarray(arr)
    p = WeakParams(resized_hw=(6, 8), crop=(2, 6, 1, 6), flip=True)
    out = np.asarray(apply_weak_pil(img, p, Image.Resampling.BILINEAR))
    assert np.array_equal(out, arr[2:6, 1:6][:, ::-1])
    p = WeakParams(resized_hw=(6, 8), crop=(4, 8, 5, 9), flip=False)
    out = np.asarray(apply_weak_pil(img, p, Image.Resampling.BILINEAR))
    assert np.array_equal(out[:2, :3], arr[4:6, 5:8])
    assert out[2:].max() == 0 and out[:, 3:].max() == 0


def test_apply_weak_tensor_bilinear_align_corners_on_a_ramp():
    # bilinear-AC keeps a linear ramp linear: value at new (i, j) = ramp at the mapped position
    H, W, h, w = 4, 5, 7, 9
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32),
                            torch.arange(W, dtype=torch.float32), indexing="ij")
    t = torch.stack([xs + 10 * ys, -xs])
    p = WeakParams(resized_hw=(h, w), crop=(2, 6, 3, 8), flip=True)
    out = apply_weak_tensor(t, p)
    i = torch.arange(2, 6, dtype=torch.float32)[:, None] * (H - 1) / (h - 1)
    j = torch.arange(3, 8, dtype=torch.float32)[None, :] * (W - 1) / (w - 1)
    expected = torch.stack([j + 10 * i, -j.expand(4, 5)]).flip(-1)
    assert out.shape == (2, 4, 5)
    assert torch.allclose(out, expected, atol=1e-5)


# ----------------------------------------------------------------------------- strong view

POOL = ["AutoContrast", "Brightness", "Color", "Contrast", "Equalize", "Identity", "Posterize",
        "Rotate", "Sharpness", "ShearX", "ShearY", "Solarize", "TranslateX", "TranslateY"]
SIGNED = {"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"}


def _expected_strong(seed: int, W: int, H: int):
    """RandAugmentMC draws replayed by hand with twin RNGs (Appendix B): params and the RNGs."""
    r, nr = random.Random(seed), np.random.RandomState(seed)
    hflip = r.random() < 0.5
    ops = []
    for name in r.choices(POOL, k=2):
        v = nr.randint(1, 10)
        if not r.random() < 0.5:
            ops.append((name, None))
            continue
        value = {"Brightness": 0.09 * v + 0.05, "Color": 0.09 * v + 0.05,
                 "Contrast": 0.09 * v + 0.05, "Sharpness": 0.09 * v + 0.05,
                 "Posterize": (4 * v) // 10 + 4, "Rotate": 3 * v, "ShearX": 0.03 * v,
                 "ShearY": 0.03 * v, "Solarize": 256 - (256 * v) // 10, "TranslateX": 0.03 * v,
                 "TranslateY": 0.03 * v}.get(name, float(v))
        if name in SIGNED and r.random() < 0.5:
            value = -value
        if name == "TranslateX":
            value = int(value * W)
        if name == "TranslateY":
            value = int(value * H)
        ops.append((name, value))
    cx, cy = nr.uniform(0, W), nr.uniform(0, H)  # cutout size min(30, 21) // 3 = 7
    x0, y0 = int(max(0, cx - 3.5)), int(max(0, cy - 3.5))
    return StrongParams(hflip, ops, (x0, y0, min(W, x0 + 7), min(H, y0 + 7))), r, nr


def test_strong_params_reproduce_with_twin_rngs():
    W, H = 30, 21
    img = Image.fromarray(np.random.RandomState(1).randint(0, 256, (H, W, 3)).astype(np.uint8))
    seen = set()
    for seed in range(60):
        rng, np_rng = random.Random(seed), np.random.RandomState(seed)
        out, p = strong_augment(img, rng, np_rng)
        exp, r, nr = _expected_strong(seed, W, H)
        assert (p.hflip, p.cutout) == (exp.hflip, exp.cutout)
        assert [n for n, _ in p.ops] == [n for n, _ in exp.ops]
        for (_, got), (_, want) in zip(p.ops, exp.ops):
            assert (got is None and want is None) or got == pytest.approx(want, abs=1e-12)
        seen.update(n for n, v in p.ops if v is not None)
        # both generators consumed exactly as many draws as the hand replay
        assert rng.random() == r.random() and np_rng.randint(1 << 30) == nr.randint(1 << 30)
        # the cutout is drawn last, grey 127, both corners inclusive
        x0, y0, x1, y1 = p.cutout
        assert out.size == (W, H)
        assert (np.asarray(out)[y0:y1 + 1, x0:x1 + 1] == 127).all()
    assert len(seen) >= 10  # the loop exercised most of the pool


# ------------------------------------------------------------------ label_strong_T replay

W_IMG, H_IMG = 224, 128  # map 56×32 at scale 4 (W/H = 1.75, as the 1/4 crop)
_BLOCKS = np.random.RandomState(0).randint(0, 12, (4, 4))
_LABEL = np.kron(_BLOCKS, np.ones((32, 56), dtype=np.int64)).astype(np.uint8)  # 128×224
_PALETTE = np.array([[20 * i, 255 - 20 * i, (57 * i) % 256] for i in range(12)], dtype=np.int64)
NO_CUTOUT = (W_IMG, H_IMG, W_IMG, H_IMG)  # outside the image: draws nothing


def _decode(img: Image.Image) -> np.ndarray:
    """Nearest palette colour → label id, grey fill → 250."""
    colours = np.concatenate([_PALETTE, [[127, 127, 127]]])
    dist = ((np.asarray(img).astype(np.int64)[:, :, None] - colours[None, None]) ** 2).sum(-1)
    lab = dist.argmin(-1)
    lab[lab == len(_PALETTE)] = 250
    return lab


def _agreement(params: StrongParams, parity: bool = False) -> float:
    """Fraction of interior map pixels where the replayed label equals the transformed image."""
    image = Image.fromarray(_PALETTE[_LABEL].astype(np.uint8))
    expected = _decode(apply_strong(image, params))[2::4, 2::4]
    label4 = torch.from_numpy(_LABEL[2::4, 2::4].astype(np.int64))[None, None]
    got = label_strong_T(label4, [params], padding=250, scale=4, parity=parity)
    assert got.dtype == torch.int64 and got.shape == (1, 1, 32, 56)
    return float((got[0, 0].numpy() == expected)[1:-1, 1:-1].mean())


@pytest.mark.parametrize("op", [("ShearX", 0.27), ("ShearX", -0.15), ("ShearY", 0.24),
                                ("ShearY", -0.3), ("TranslateX", 68), ("TranslateX", -32),
                                ("TranslateY", -40), ("TranslateY", 16), ("Rotate", 27),
                                ("Rotate", -12)])
def test_each_geometric_op_replays_like_the_image(op):
    assert _agreement(StrongParams(False, [op], NO_CUTOUT)) > 0.95


def test_hflip_and_cutout_replay_like_the_image():
    assert _agreement(StrongParams(True, [], NO_CUTOUT)) > 0.95
    params = StrongParams(False, [], (20, 12, 80, 60))
    assert _agreement(params) == 1.0
    label4 = torch.zeros(1, 1, 32, 56)
    out = label_strong_T(label4, [params])
    assert (out[0, 0, 3:15, 5:20] == 250).all() and out[0, 0].eq(250).sum() == 12 * 15


def test_a_sampled_sequence_replays_in_sampled_order():
    ops = [("Rotate", 21), ("Posterize", 6), ("ShearX", 0.3)]
    params = StrongParams(True, ops, (100, 40, 140, 80))
    assert _agreement(params) > 0.95
    assert _agreement(params, parity=True) < 0.9  # official fixed order: shear before rotate


def _coords(axis: int) -> torch.Tensor:
    """1×1×32×56 map whose value is the column (axis=1) or row (axis=0) index."""
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(56.0), indexing="ij")
    return (xs if axis == 1 else ys)[None, None]


def test_translate_x_intended_shift_and_the_parity_1_75x_shift():
    params = [StrongParams(False, [("TranslateX", 32)], NO_CUTOUT)]  # 32 px = 8 map px
    x = torch.arange(56.0)
    for parity, shift in ((False, 8), (True, 14)):  # 14 = 8 · 224/128 (Q6)
        out = label_strong_T(_coords(1), params, parity=parity)[0, 0]
        expected = torch.where(x + shift < 56, x + shift, torch.tensor(250.0)).expand(32, 56)
        assert torch.equal(out, expected), parity


def test_parity_replays_repeated_ops_once_with_the_last_value():
    ops = [("TranslateY", 8), ("Identity", 3.0), ("TranslateY", 16)]
    params = [StrongParams(False, ops, NO_CUTOUT)]
    y = torch.arange(32.0)[:, None]
    for parity, shift in ((False, 2 + 4), (True, 4)):
        out = label_strong_T(_coords(0), params, parity=parity)[0, 0]
        expected = torch.where(y + shift < 32, y + shift, torch.tensor(250.0)).expand(32, 56)
        assert torch.equal(out, expected), parity


def test_parity_uses_the_fixed_order_shear_translate_rotate():
    maps = torch.arange(2 * 32 * 56, dtype=torch.float32).reshape(1, 2, 32, 56)
    sampled = [("Rotate", 20), ("TranslateY", -12), ("ShearY", 0.2)]
    fixed = [("ShearY", 0.2), ("TranslateY", -12), ("Rotate", 20)]
    parity = label_strong_T(maps, [StrongParams(True, sampled, (8, 8, 40, 20))], parity=True)
    reordered = label_strong_T(maps, [StrongParams(True, fixed, (8, 8, 40, 20))])
    intended = label_strong_T(maps, [StrongParams(True, sampled, (8, 8, 40, 20))])
    assert torch.equal(parity, reordered)
    assert not torch.equal(parity, intended)


def test_padding_value_fills_out_of_frame_and_cutout():
    maps = torch.full((2, 3, 8, 12), 3.0)
    params = [StrongParams(False, [("TranslateY", 8)], (4, 0, 11, 7)),
              StrongParams(False, [("ShearX", None)], (0, 0, 0, 0))]
    for padding in (250, 7):
        out = label_strong_T(maps, params, padding=padding)
        expected = torch.full_like(maps, 3.0)
        expected[0, :, 6:] = padding  # shifted up by 8 px = 2 map rows
        expected[0, :, 0:1, 1:2] = padding  # cutout rows 0//4:7//4, cols 4//4:11//4
        assert torch.equal(out, expected)
    with pytest.raises(ValueError, match="params"):
        label_strong_T(maps, params[:1])


# ------------------------------------------------------------------------------ full2weak


def test_full2weak_resize_crop_flip_by_hand():
    ys, xs = torch.meshgrid(torch.arange(4.0), torch.arange(6.0), indexing="ij")
    feat = torch.stack([2 * xs + 3 * ys, -ys])[None].repeat(2, 1, 1, 1)  # 2×2×4×6
    params = [WeakParams((16, 24), (4, 12, 8, 20), True),  # same size: a crop and a flip
              WeakParams((28, 44), (5, 13, 10, 22), False)]  # resized to 7×11
    out = full2weak(feat, params, scale=4)
    assert out.shape == (2, 2, 2, 3)
    assert torch.equal(out[0], feat[0, :, 1:3, 2:5].flip(-1))
    # bilinear-AC on a ramp; crop rows [int(5/4), +int(8/4)) = [1, 3), cols [int(10/4), +3) = [2, 5)
    i = torch.arange(1.0, 3.0)[:, None] * 3 / 6
    j = torch.arange(2.0, 5.0)[None, :] * 5 / 10
    assert torch.allclose(out[1], torch.stack([2 * j + 3 * i, -i.expand(2, 3)]), atol=1e-5)
