"""proda.quality: pseudo-label quality against ground truth (hand-made answers and a toy model)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from proda.data import CityscapesDataset
from proda.data.toycity import generate
from proda.models import DeepLabV2, save_checkpoint
from proda.pseudo_labels import HardLabelStore, SoftLabelStore, generate_hard, generate_soft
from proda.quality import (QUALITY_COLUMNS, checkpoint_prototypes, hard_label_quality,
                           label_quality, plot_quality, rectified_label_quality,
                           soft_label_quality, write_quality_csv)

torch.set_num_threads(1)
C = 19
H, W = 4, 8


# ----------------------------------------------------------------------------- label_quality
def test_kept_half_equal_to_ground_truth() -> None:
    gt = np.array([[0, 0, 1, 1], [2, 2, 3, 3]])
    pred = np.where(np.arange(4) < 2, gt, 250)  # left half kept and right, right half dropped
    q = label_quality(pred, gt, n_class=4)
    assert q == {"miou": 100.0, "pixel_acc": 100.0, "kept_fraction": 50.0}


def test_errors_ignored_ground_truth_and_iterables() -> None:
    gt = torch.tensor([[0, 0, 1, 1, 250]])
    pred = torch.tensor([[0, 1, 1, 250, 3]])  # 250 in gt: never counted, whatever pred says
    q = label_quality(pred, gt, n_class=4)
    # kept: (0,0), (0,1), (1,1): IoU_0 = 1/2, IoU_1 = 1/2; pixel acc 2/3; 3 of 4 labelled kept
    assert q["miou"] == pytest.approx(50.0)
    assert q["pixel_acc"] == pytest.approx(200 / 3)
    assert q["kept_fraction"] == pytest.approx(75.0)
    split = label_quality([pred[:, :2], pred[:, 2:]], [gt[:, :2], gt[:, 2:]], n_class=4)
    assert split == pytest.approx(q)


def test_nothing_kept_or_labelled_is_nan_and_bad_ids_raise() -> None:
    q = label_quality(np.full((2, 2), 250), np.zeros((2, 2), dtype=np.int64), n_class=2)
    assert math.isnan(q["miou"]) and math.isnan(q["pixel_acc"]) and q["kept_fraction"] == 0.0
    assert math.isnan(label_quality(np.zeros((2, 2)).astype(int), np.full((2, 2), 250), 2)["kept_fraction"])
    with pytest.raises(ValueError, match="prediction 7"):
        label_quality(np.array([7]), np.array([1]), n_class=2)
    with pytest.raises(ValueError, match="shape"):
        label_quality(np.zeros((2, 2), dtype=int), np.zeros((2, 3), dtype=int), n_class=2)


# ----------------------------------------------------------------------------- hand-made artifacts
class Fixed(nn.Module):
    """A 'model' returning fixed logits and features at the input resolution."""

    def __init__(self, logits: torch.Tensor, feat: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)
        self.register_buffer("feat", feat)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        n = x.shape[0]
        return {"out": self.logits.expand(n, -1, -1, -1), "feat": self.feat.expand(n, -1, -1, -1)}


class Items(Dataset):
    """Two 4×8 images; ground truth: class 1 left, class 2 right, top row ignored."""

    n_class = C

    def __init__(self) -> None:
        label = torch.where(torch.arange(W) < W // 2, 1, 2).expand(H, W).clone()
        label[0] = 250
        self.label = label

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> dict:
        return {"img": torch.zeros(3, H, W), "label": self.label.clone(), "name": f"im{i}.png"}


def _logits(left: dict[int, float], right: dict[int, float]) -> torch.Tensor:
    """1×C×H×W logits, -30 except the given classes per half."""
    out = torch.full((1, C, H, W), -30.0)
    for half, values in ((slice(0, W // 2), left), (slice(W // 2, W), right)):
        for k, v in values.items():
            out[0, k, :, half] = v
    return out


@pytest.fixture()
def noisy(tmp_path) -> tuple[Fixed, torch.Tensor, SoftLabelStore]:
    """Soft labels 0.6 class 1 / 0.4 class 2 everywhere (wrong on the right half); features equal
    to prototype 1 on the left and prototype 2 on the right."""
    logits = _logits({1: math.log(0.6), 2: math.log(0.4)}, {1: math.log(0.6), 2: math.log(0.4)})
    protos = torch.full((C, 2), 50.0)
    protos[1], protos[2] = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    feat = torch.where(torch.arange(W) < W // 2, protos[1][:, None], protos[2][:, None])  # 2×W
    model = Fixed(logits, feat[:, None, :].expand(2, H, W)[None].clone())
    store = generate_soft(model, Items(), tmp_path / "soft.h5", n_class=C, progress=False)
    return model, protos, SoftLabelStore(store)


def test_soft_labels_and_their_rectification(noisy) -> None:
    model, protos, store = noisy
    soft = soft_label_quality(store, Items(), progress=False)
    # all class 1: IoU_1 = 12/24, IoU_2 = 0, pixel acc 1/2, everything kept
    assert soft == pytest.approx({"miou": 25.0, "pixel_acc": 50.0, "kept_fraction": 100.0}, abs=1e-9)
    rect = rectified_label_quality(model, protos, store, Items(), temperature=10.0, progress=False)
    assert rect == pytest.approx({"miou": 100.0, "pixel_acc": 100.0, "kept_fraction": 100.0})
    uniform = rectified_label_quality(model, protos, store, Items(), temperature=0.0,
                                      train_mode=False, progress=False, resolution="quarter")
    assert uniform == pytest.approx(soft)  # T = 0: equal weights, the arg-max of q
    dropped = rectified_label_quality(model, protos, store, Items(), temperature=0.0,
                                      threshold=0.7, progress=False)  # conf = 0.6 everywhere
    assert dropped["kept_fraction"] == 0.0 and math.isnan(dropped["miou"])
    with pytest.raises(ValueError, match="prototypes"):
        rectified_label_quality(model, protos[:3], store, Items(), temperature=1.0, progress=False)


def test_hard_labels_with_threshold(tmp_path) -> None:
    # left: confident class 1 (p ≈ 1); right: class 2 at p ≈ 0.53 (logit 3 against 18 zeros)
    logits = _logits({1: 30.0}, {k: 0.0 for k in range(C)} | {2: 3.0})
    model = Fixed(logits, torch.zeros(1, 2, H, W))
    path = generate_hard(model, Items(), tmp_path / "hard.h5", n_class=C, flip=False,
                         thresholds=(0.5, 0.9), progress=False)
    store = HardLabelStore(path)
    assert hard_label_quality(store, Items(), -1, progress=False) == \
        {"miou": 100.0, "pixel_acc": 100.0, "kept_fraction": 100.0}
    assert hard_label_quality(store, Items(), 0.9, progress=False) == \
        {"miou": 100.0, "pixel_acc": 100.0, "kept_fraction": 50.0}
    with pytest.raises(ValueError, match="0.7"):
        hard_label_quality(store, Items(), 0.7, progress=False)


# ----------------------------------------------------------------------------- toy model
@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    generate(root / "bench", n_source=2, n_target_train=2, n_target_val=2, source_size=(64, 32),
             target_size=(64, 32))
    dataset = CityscapesDataset(root / "bench" / "cityscapes", split="train", size=None)
    torch.manual_seed(0)
    model = DeepLabV2(C, backbone="resnet18", base_width=8, head_channels=32)
    soft = SoftLabelStore(generate_soft(model, dataset, root / "soft.h5", n_class=C, progress=False))
    return root, dataset, model, soft


def _nearest(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest upsampling by index arithmetic (PyTorch's 'nearest': floor(i · in / out))."""
    rows = np.arange(size[0]) * label.shape[0] // size[0]
    cols = np.arange(size[1]) * label.shape[1] // size[1]
    return label[rows[:, None], cols[None, :]]


def test_rectified_labels_on_a_tiny_deeplab(toy) -> None:
    _, dataset, model, soft = toy
    protos = torch.randn(C, model.feat_dim)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    q = rectified_label_quality(model, protos, soft, dataset, temperature=1.0, batch_size=2,
                                progress=False)
    assert set(q) == {"miou", "pixel_acc", "kept_fraction"}
    assert 0 <= q["miou"] <= 100 and 0 <= q["pixel_acc"] <= 100 and q["kept_fraction"] == 100.0
    assert not model.training  # mode restored, and train-mode BN statistics rolled back
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    # T = 0 (equal weights): the arg-max of q at the feature size, nearest-upsampled
    expected = [_nearest(soft.get(item["name"]).argmax(0).numpy(), item["label"].shape)
                for item in (dataset[i] for i in range(len(dataset)))]
    gts = [dataset[i]["label"].numpy() for i in range(len(dataset))]
    got = rectified_label_quality(model, protos, soft, dataset, temperature=0.0, train_mode=False,
                                  progress=False)
    assert got == pytest.approx(label_quality(expected, gts, C), nan_ok=True)


def test_rectified_label_quality_repeats_exactly_in_train_mode(toy) -> None:
    """Train mode draws dropout masks on ``feat``: they come from ``seed``, not the global RNG."""
    _, dataset, model, soft = toy
    protos = torch.randn(C, model.feat_dim)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    runs = [rectified_label_quality(model, protos, soft, dataset, temperature=1.0, batch_size=2, seed=seed,
                                    progress=False) for seed in (7, 7, 8)]
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG stream is untouched
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]  # another seed draws other masks (the run above is not dropout-free)


def test_checkpoint_prototypes(toy, tmp_path) -> None:
    _, _, model, _ = toy
    protos = torch.randn(C, model.feat_dim)
    path = save_checkpoint(tmp_path / "s1.pt", model, prototypes=protos)
    assert torch.equal(checkpoint_prototypes(path), protos)
    with pytest.raises(ValueError, match="all zero"):
        checkpoint_prototypes(save_checkpoint(tmp_path / "w.pt", model))


# ----------------------------------------------------------------------------- outputs
def test_quality_csv_and_plot(tmp_path) -> None:
    rows = [{"artifact": "soft (warm-up)", "miou": 40.0, "pixel_acc": 80.0, "kept_fraction": 100.0},
            {"artifact": "rectified (initial prototypes)", "miou": 45.5, "pixel_acc": 83.0,
             "kept_fraction": 100.0, "extra": 1},
            {"artifact": "hard (stage 1, 0.95)", "miou": float("nan"), "pixel_acc": 90.0,
             "kept_fraction": 0.0}]
    csv = write_quality_csv(rows, tmp_path / "label_quality.csv")
    back = pd.read_csv(csv)
    assert list(back.columns) == list(QUALITY_COLUMNS)
    assert back["miou"].iloc[1] == 45.5 and math.isnan(back["miou"].iloc[2])
    png = plot_quality(csv, tmp_path / "label_quality.png")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
    with pytest.raises(ValueError, match="kept_fraction"):
        write_quality_csv([{"artifact": "x", "miou": 1.0, "pixel_acc": 1.0}], tmp_path / "bad.csv")
