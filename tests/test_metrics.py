"""proda.metrics against hand computations and the official Cityscapes evaluation package."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from PIL import Image

from proda.metrics import ConfusionAccumulator, confusion_matrix, iou_table

# 3 classes; gt 250 and 7 (outside [0, 3)) are not counted.
GT = np.array([[0, 0, 1, 1],
               [2, 2, 250, 7]])
PRED = np.array([[0, 1, 1, 1],
                 [2, 0, 2, 0]])
# counted pixels (gt, pred): (0,0) (0,1) (1,1) (1,1) (2,2) (2,0)
HAND_CONFUSION = [[1, 1, 0],
                  [0, 2, 0],
                  [1, 0, 1]]


def test_confusion_matrix_by_hand_and_ignored_pixels() -> None:
    cm = confusion_matrix(PRED, GT, 3)
    assert cm.dtype == torch.int64
    assert cm.tolist() == HAND_CONFUSION
    # same result from torch tensors of another integer dtype and another shape
    cm_t = confusion_matrix(torch.from_numpy(PRED).to(torch.uint8).reshape(1, 2, 1, 4),
                            torch.from_numpy(GT).reshape(1, 2, 1, 4), 3)
    assert cm_t.tolist() == HAND_CONFUSION


def test_confusion_matrix_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.array([3, 0]), np.array([1, 0]), 3)
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.array([-1]), np.array([0]), 3)
    # an out-of-range prediction on an ignored pixel is fine
    assert confusion_matrix(np.array([9, 0]), np.array([250, 0]), 3).sum().item() == 1
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 2), int), np.zeros(4, int), 3)
    with pytest.raises(ValueError, match="integer"):
        confusion_matrix(np.zeros(4), np.zeros(4, int), 3)


def test_iou_table_by_hand() -> None:
    t = iou_table(torch.tensor(HAND_CONFUSION))
    # IoU_c = tp / (row + col - tp): class 0: 1/(2+2-1), class 1: 2/(2+3-2), class 2: 1/(2+1-1)
    np.testing.assert_allclose(t.iou, [1 / 3, 2 / 3, 1 / 2], rtol=0, atol=1e-15)
    assert t.miou == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3, abs=1e-15)
    assert t.pixel_acc == pytest.approx(4 / 6, abs=1e-15)
    assert t.mean_acc == pytest.approx((1 / 2 + 2 / 2 + 1 / 2) / 3, abs=1e-15)
    assert t.fwiou == pytest.approx(2 / 6 * 1 / 3 + 2 / 6 * 2 / 3 + 2 / 6 * 1 / 2, abs=1e-15)
    assert t.n_class == 3
    assert t.confusion.tolist() == HAND_CONFUSION


def test_absent_class_is_nan_and_skipped() -> None:
    # class 1 never appears in gt nor pred; class 3 is predicted but absent from gt (IoU 0).
    cm = np.array([[3, 0, 0, 1],
                   [0, 0, 0, 0],
                   [1, 0, 2, 0],
                   [0, 0, 0, 0]])
    t = iou_table(cm)
    assert math.isnan(t.iou[1])
    np.testing.assert_allclose(t.iou[[0, 2, 3]], [3 / 5, 2 / 3, 0.0], atol=1e-15)
    assert t.miou == pytest.approx((3 / 5 + 2 / 3 + 0.0) / 3, abs=1e-15)
    # row sums 4, 0, 3, 0: classes 1 and 3 have no accuracy and no frequency
    assert t.mean_acc == pytest.approx((3 / 4 + 2 / 3) / 2, abs=1e-15)
    assert t.fwiou == pytest.approx(4 / 7 * 3 / 5 + 3 / 7 * 2 / 3, abs=1e-15)
    assert t.pixel_acc == pytest.approx(5 / 7, abs=1e-15)
    assert math.isnan(iou_table(np.zeros((2, 2), int)).miou)


def test_miou_over_subset_like_miou13() -> None:
    # 16 classes with distinct IoUs; classes 3, 4, 5 (wall, fence, pole) are left out
    cm = np.zeros((16, 16), dtype=np.int64)
    for c in range(16):
        cm[c, c] = 1
        cm[c, (c + 1) % 16] = c  # c false negatives; class c+1 gets c false positives
    t = iou_table(cm)
    fp = [(c - 1) % 16 for c in range(16)]  # false positives of class c come from row c-1
    hand = [1 / (1 + c + fp[c]) for c in range(16)]
    np.testing.assert_allclose(t.iou, hand, atol=1e-15)
    kept = [c for c in range(16) if c not in (3, 4, 5)]
    assert t.miou_over(kept) == pytest.approx(sum(hand[c] for c in kept) / 13, abs=1e-15)
    assert t.miou == pytest.approx(sum(hand) / 16, abs=1e-15)
    with pytest.raises(ValueError):
        t.miou_over([16])


def test_accumulator_equals_single_matrix() -> None:
    gen = torch.Generator().manual_seed(0)
    gt = torch.randint(0, 5, (3, 6, 7), generator=gen)
    gt[gt == 4] = 250
    pred = torch.randint(0, 4, (3, 6, 7), generator=gen)
    acc = ConfusionAccumulator(4)
    for i in range(3):
        acc.add(pred[i], gt[i].numpy())
    assert torch.equal(acc.confusion, confusion_matrix(pred, gt, 4))
    np.testing.assert_array_equal(acc.table().iou, iou_table(confusion_matrix(pred, gt, 4)).iou)


def test_agrees_with_cityscapesscripts(tmp_path, monkeypatch) -> None:
    """Per-class IoU and mean equal the official Cityscapes evaluation to 1e-9."""
    monkeypatch.setenv("CITYSCAPES_DATASET", str(tmp_path))
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_eval
    from cityscapesscripts.helpers.labels import id2label, labels, trainId2label

    eval_ids = np.array([trainId2label[t].id for t in range(19)])
    void_ids = np.array([l.id for l in labels if l.id >= 0 and l.ignoreInEval])
    lut = np.full(256, 250, dtype=np.int64)
    lut[eval_ids] = np.arange(19)

    rng = np.random.default_rng(0)
    present = eval_ids[eval_ids != trainId2label[16].id]  # "train" absent everywhere -> NaN
    gt_pool = np.concatenate([present, void_ids])
    pred_files, gt_files, preds, gts = [], [], [], []
    for i in range(3):
        gt = rng.choice(gt_pool, size=(30, 40)).astype(np.uint8)
        pred = np.where(rng.random((30, 40)) < 0.4, gt, rng.choice(present, size=(30, 40)))
        pred = np.where(np.isin(pred, eval_ids), pred, rng.choice(present, size=(30, 40)))
        pred = pred.astype(np.uint8)
        gt_files.append(str(tmp_path / f"city_{i:06d}_000019_gtFine_labelIds.png"))
        pred_files.append(str(tmp_path / f"city_{i:06d}_000019_pred.png"))
        Image.fromarray(gt, mode="L").save(gt_files[-1])
        Image.fromarray(pred, mode="L").save(pred_files[-1])
        gts.append(lut[gt])
        preds.append(lut[pred])

    args = copy.copy(cs_eval.args)
    args.quiet, args.JSONOutput = True, False
    args.evalInstLevelScore, args.evalPixelAccuracy = False, False
    args.exportFile = str(tmp_path / "unused.json")
    result = cs_eval.evaluateImgLists(pred_files, gt_files, args)

    ours = iou_table(confusion_matrix(np.stack(preds), np.stack(gts), 19))
    theirs = np.array([result["classScores"][id2label[i].name] for i in eval_ids])
    assert np.isnan(theirs[16]) and np.isnan(ours.iou[16])
    np.testing.assert_allclose(ours.iou, theirs, rtol=0, atol=1e-9, equal_nan=True)
    assert abs(ours.miou - result["averageScoreClasses"]) < 1e-9
    assert not (tmp_path / "unused.json").exists()
