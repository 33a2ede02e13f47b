"""TrainingDataset: weak/strong views, pseudo-label alignment, per-item seeding, collate."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from proda.data.training import TrainingDataset, collate
from proda.data.transforms import StrongParams, WeakParams

torch.set_num_threads(1)

W0, H0, BLOCK = 64, 32, 16  # image size and block side of the label pattern


class FakeDataset:
    """Images whose red channel is 8·block id (+ a per-item green), labels = the block id."""

    def __init__(self, n: int = 3) -> None:
        self.n = n
        ys, xs = np.mgrid[0:H0, 0:W0]
        self.blocks = (xs // BLOCK + (W0 // BLOCK) * (ys // BLOCK)).astype(np.uint8)  # 0..7

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"name": f"img{i}.png"}

    def load_pil(self, i: int) -> tuple[Image.Image, np.ndarray]:
        rgb = np.zeros((H0, W0, 3), dtype=np.uint8)
        rgb[..., 0] = 8 * self.blocks
        rgb[..., 1] = 10 * i
        return Image.fromarray(rgb), self.blocks.copy()


class SoftStore:
    """Soft labels at 1/4 resolution: channel 0 = x / (w0-1), channel 1 = y / (h0-1)."""

    def get(self, name: str) -> np.ndarray:
        ys, xs = np.mgrid[0:H0 // 4, 0:W0 // 4].astype(np.float32)
        return np.stack([xs / (W0 // 4 - 1), ys / (H0 // 4 - 1)])


class HardStore:
    """Hard labels: the block id with 250 on every third block (its own threshold applied);
    counts the labels served."""

    def __init__(self) -> None:
        self.served = 0

    def get(self, name: str) -> np.ndarray:
        self.served += 1
        blocks = FakeDataset().blocks
        return np.where(blocks % 3 == 0, 250, blocks).astype(np.uint8)


def _dataset(**kw) -> TrainingDataset:
    args = dict(resize_base=W0, crop_wh=(32, 16), seed=3)
    args.update(kw)
    return TrainingDataset(FakeDataset(), **args)


def _decoded(img: torch.Tensor) -> torch.Tensor:
    """Block id read back from the red channel."""
    return torch.round(img[0] * 255 / 8).long()


def test_item_keys_shapes_and_types():
    ds = _dataset(full_image=True, soft_labels=SoftStore(), hard_labels=HardStore())
    item = ds[1]
    assert item["img"].shape == item["img_strong"].shape == (3, 16, 32)
    assert item["img"].dtype == torch.float32 and 0 <= item["img"].min() and item["img"].max() <= 1
    assert item["label"].shape == item["lp"].shape == (16, 32)
    assert item["label"].dtype == item["lp"].dtype == torch.int64
    assert item["lpsoft"].shape == (2, 16, 32) and item["lpsoft"].dtype == torch.float32
    assert isinstance(item["weak_params"], WeakParams)
    assert isinstance(item["strong_params"], StrongParams)
    assert item["name"] == "img1.png"
    full = np.asarray(FakeDataset().load_pil(1)[0], dtype=np.float32) / 255
    assert torch.allclose(item["img_full"], torch.from_numpy(full).permute(2, 0, 1))
    assert "img_strong" not in _dataset(strong=False)[0]


def test_label_stays_aligned_with_the_image_without_resizing():
    ds = _dataset(scale_range=(1.0, 1.0))  # w = 64, h = 32: crop and flip only
    flips = set()
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            flips.add(item["weak_params"].flip)
            assert torch.equal(_decoded(item["img"]), item["label"])
    assert flips == {True, False}


def test_label_stays_aligned_with_the_image_after_random_resizing():
    ds = _dataset()
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            assert (_decoded(item["img"]) == item["label"]).float().mean() > 0.85


def test_soft_labels_follow_the_weak_view_exactly():
    ds = _dataset(soft_labels=SoftStore())
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            p = item["weak_params"]
            (h, w), (y1, _, x1, _) = p.resized_hw, p.crop
            xs = (x1 + torch.arange(32.0)) / (w - 1)  # the ramps survive bilinear-AC resizing
            ys = (y1 + torch.arange(16.0)) / (h - 1)
            expected = torch.stack([xs.expand(16, 32), ys[:, None].expand(16, 32)])
            expected = expected.flip(-1) if p.flip else expected
            assert torch.allclose(item["lpsoft"], expected, atol=1e-5)


def test_hard_labels_follow_the_label():
    store = HardStore()
    ds = _dataset(hard_labels=store)
    for i in range(len(ds)):
        item = ds[i]
        label = item["label"]
        assert torch.equal(item["lp"], torch.where(label % 3 == 0, 250, label))
    assert store.served == len(ds)


def test_items_depend_only_on_seed_epoch_and_index():
    ds = _dataset(soft_labels=SoftStore())
    first = [ds[i] for i in range(3)]
    again = [ds[i] for i in (2, 0, 1)]  # any fetch order (or worker) gives the same items
    for a, b in zip(first, [again[1], again[2], again[0]]):
        assert a["weak_params"] == b["weak_params"] and a["strong_params"] == b["strong_params"]
        assert torch.equal(a["img_strong"], b["img_strong"])
        assert torch.equal(a["lpsoft"], b["lpsoft"])
    ds.set_epoch(1)
    other = [ds[i] for i in range(3)]
    assert [x["weak_params"] for x in other] != [x["weak_params"] for x in first]
    assert [x["strong_params"] for x in other] != [x["strong_params"] for x in first]
    reseeded = _dataset(seed=4)
    assert [reseeded[i]["weak_params"] for i in range(3)] != [x["weak_params"] for x in first]
    ds.set_epoch(0)
    assert [ds[i]["weak_params"] for i in range(3)] == [x["weak_params"] for x in first]


def test_collate_stacks_tensors_and_keeps_params_as_lists():
    ds = _dataset(hard_labels=HardStore())
    batch = next(iter(DataLoader(ds, batch_size=2, collate_fn=collate)))
    assert batch["img"].shape == (2, 3, 16, 32) and batch["lp"].shape == (2, 16, 32)
    assert batch["name"] == ["img0.png", "img1.png"]
    assert batch["weak_params"] == [ds[0]["weak_params"], ds[1]["weak_params"]]
    assert all(isinstance(p, StrongParams) for p in batch["strong_params"])


def test_bad_pseudo_labels_name_the_image():
    class BadSoft:
        def get(self, name):
            return np.zeros((4, 4), dtype=np.float32)

    with pytest.raises(ValueError, match="img0.png"):
        _dataset(soft_labels=BadSoft())[0]
    with pytest.raises(ValueError, match="seed"):
        _dataset(seed=-1)


@pytest.mark.parametrize("small", ["resize", "pad"])
def test_views_when_the_resized_image_is_smaller_than_the_crop(small):
    ds = _dataset(resize_base=40, small=small, soft_labels=SoftStore())  # w in [20, 60)
    smaller = 0
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item, p = ds[i], ds[i]["weak_params"]
            assert item["img"].shape == (3, 16, 32) and item["lpsoft"].shape == (2, 16, 32)
            h, w = p.resized_hw
            if small == "resize" and p.resized_hw == (16, 32):
                smaller += 1
                assert p.crop == (0, 16, 0, 32)
            if small == "pad" and (h < 16 or w < 32):
                smaller += 1
                outside = torch.ones(16, 32, dtype=torch.bool)
                outside[:h, :w] = False
                outside = outside.flip(-1) if p.flip else outside
                assert (item["label"][outside] == 250).all() and (item["label"][~outside] < 8).all()
                assert (item["img"][:, outside] == 0).all()
                assert (item["lpsoft"][:, outside] == 0).all()
            valid = item["label"] != 250
            assert (_decoded(item["img"]) == item["label"])[valid].float().mean() > 0.8
    assert smaller > 0
