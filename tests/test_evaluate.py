"""proda.evaluate: checkpoint → per-class CSV, prediction PNGs, CLI, on a tiny Cityscapes split."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from proda.cli import main
from proda.evaluate import evaluate_checkpoint, predict, write_eval_csv
from proda.metrics import iou_table
from proda.models import DeepLabV2, save_checkpoint

# 19-class Cityscapes label ids in train-id order (docs/method.md §2.2).
IDS19 = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
NAMES19 = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
           "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
           "bus", "train", "motorcycle", "bicycle"]
NAMES16 = [n for n in NAMES19 if n not in ("terrain", "truck", "train")]
STEMS = ["aachen_000000_000019", "aachen_000001_000019"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """A tiny checkpoint and a 2-image Cityscapes val split (64×32, labelIds incl. void ids)."""
    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("eval")
    model = DeepLabV2(19, backbone="resnet18", base_width=8, head_channels=32)
    with torch.no_grad():  # a spread-out head so that the predictions use several classes
        for p in model.layer5.parameters():
            p.normal_(0.0, 0.5)
    ckpt = save_checkpoint(tmp / "model.pt", model)
    rng = np.random.default_rng(0)
    root = tmp / "cityscapes"
    imgs, gts = [], []
    for stem in STEMS:
        img = rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)
        ids = rng.choice(IDS19[:16] + IDS19[17:] + [0, 4, 30], size=(32, 64)).astype(np.uint8)
        for sub, name, arr in (("leftImg8bit", f"{stem}_leftImg8bit.png", img),
                               ("gtFine", f"{stem}_gtFine_labelIds.png", ids)):
            (root / sub / "val" / "aachen").mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / sub / "val" / "aachen" / name)
        imgs.append(img)
        gts.append(ids)
    return {"ckpt": ckpt, "root": root, "model": model, "imgs": imgs, "gts": gts}


def _direct(setup: dict) -> tuple[np.ndarray, np.ndarray]:
    """Predicted and true train ids computed here, without the package's evaluation code."""
    model = setup["model"].eval()
    x = torch.from_numpy(np.stack(setup["imgs"])).permute(0, 3, 1, 2).double().div(255).float()
    with torch.no_grad():
        logits = model(x)["out"]
    up = F.interpolate(logits, size=(32, 64), mode="bilinear", align_corners=True)
    lut = np.full(256, 250)
    lut[IDS19] = np.arange(19)
    return up.argmax(1).numpy(), lut[np.stack(setup["gts"])]


def _read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def test_predict_upsamples_to_input_size(setup) -> None:
    x = torch.rand(1, 3, 32, 64)
    pred = predict(setup["model"], x)
    assert pred.shape == (1, 32, 64) and pred.dtype == torch.int64
    assert int(pred.min()) >= 0 and int(pred.max()) < 19


def test_evaluate_checkpoint_csv_matches_direct_computation(setup, tmp_path) -> None:
    out_csv = tmp_path / "eval" / "stage.csv"
    table = evaluate_checkpoint(setup["ckpt"], root=setup["root"], device="cpu", progress=False,
                                batch_size=1, out_csv=out_csv)
    pred, gt = _direct(setup)
    assert len(np.unique(pred)) > 2  # the check below is not trivial
    valid = gt != 250
    p, g = pred[valid], gt[valid]
    inter = np.array([np.sum((p == c) & (g == c)) for c in range(19)], dtype=float)
    union = np.array([np.sum((p == c) | (g == c)) for c in range(19)], dtype=float)
    with np.errstate(invalid="ignore"):
        iou = inter / union
    np.testing.assert_allclose(table.iou, iou, rtol=0, atol=1e-12, equal_nan=True)

    rows = _read_csv(out_csv)
    assert rows[0] == ["class", "iou"]
    assert [r[0] for r in rows[1:]] == NAMES19 + ["mIoU", "pixel_acc", "mean_acc", "fwIoU"]
    for (_, cell), v in zip(rows[1:20], iou):
        assert (cell == "") if math.isnan(v) else float(cell) == pytest.approx(100 * v, abs=1e-9)
    summary = {k: float(v) for k, v in rows[20:]}
    assert summary["mIoU"] == pytest.approx(100 * np.nanmean(iou), abs=1e-9)
    assert summary["pixel_acc"] == pytest.approx(100 * np.mean(p == g), abs=1e-9)
    assert not list(out_csv.parent.glob("*.tmp"))


def test_save_dir_writes_label_and_colour_pngs(setup, tmp_path) -> None:
    evaluate_checkpoint(setup["ckpt"], root=setup["root"], device="cpu", progress=False,
                        save_dir=tmp_path / "pred")
    pred, _ = _direct(setup)
    for i, stem in enumerate(STEMS):
        label = Image.open(tmp_path / "pred" / f"{stem}_leftImg8bit.png")
        color = Image.open(tmp_path / "pred" / f"{stem}_leftImg8bit_color.png")
        assert label.mode == "L" and color.mode == "RGB" and label.size == (64, 32)
        np.testing.assert_array_equal(np.asarray(label), pred[i])
        road = pred[i] == 0
        if road.any():
            assert tuple(np.asarray(color)[road][0]) == (128, 64, 128)


def test_sixteen_class_csv_has_miou13(tmp_path) -> None:
    cm = np.diag(np.arange(1, 17))
    cm[0, 3] = 5  # wall gets 5 false positives: IoU 4/9; road loses 5 pixels: IoU 1/6
    iou = np.ones(16)
    iou[0], iou[3] = 1 / 6, 4 / 9
    rows = _read_csv(write_eval_csv(iou_table(cm), tmp_path / "e.csv", 16))
    assert [r[0] for r in rows[1:17]] == NAMES16
    values = {k: float(v) for k, v in rows[17:]}
    assert list(values) == ["mIoU", "mIoU-16", "mIoU-13", "pixel_acc", "mean_acc", "fwIoU"]
    assert values["mIoU-16"] == values["mIoU"] == pytest.approx(100 * iou.mean(), abs=1e-9)
    kept = [c for c in range(16) if c not in (3, 4, 5)]
    assert values["mIoU-13"] == pytest.approx(100 * iou[kept].mean(), abs=1e-9)


def test_n_class_mismatch_is_rejected(setup) -> None:
    with pytest.raises(ValueError, match="16"):
        evaluate_checkpoint(setup["ckpt"], root=setup["root"], n_class=16, device="cpu",
                            progress=False)


def test_cli_prints_table_and_writes_csv(setup, tmp_path, capsys) -> None:
    out_csv = tmp_path / "cli.csv"
    assert main(["evaluate", "--checkpoint", str(setup["ckpt"]), "--root", str(setup["root"]),
                 "--device", "cpu", "--size", "64", "32", "--out", str(out_csv)]) == 0
    printed = capsys.readouterr().out
    assert "traffic light" in printed and "mIoU" in printed
    miou = dict(_read_csv(out_csv)[1:])["mIoU"]
    assert f"{float(miou):6.2f}" in printed
