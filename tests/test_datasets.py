"""Real-layout loaders on tiny files written in the test: mappings, sizes, and every bad input."""
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from proda.data import (CityscapesDataset, DatasetError, GTA5Dataset, SynthiaDataset,
                        build_dataset)
from proda.data.training import TrainingDataset

from test_labels import expected_map

W, H = 8, 6
RAW = (np.arange(H * W) % 35).reshape(H, W).astype(np.uint8)  # every GTA5 id 0..34 appears
# Cityscapes labelIds stop at 33 (34 is a GTA5-only id and a Cityscapes label error).
CS_RAW = (np.arange(H * W) % 34).reshape(H, W).astype(np.uint8)


def rgb(seed: int, w: int = W, h: int = H) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(path: Path, arr: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr)
    if mode == "P":
        im.putpalette([v for i in range(256) for v in (i, 255 - i, 0)])
    im.save(path)


def map_with(table: dict[int, int], raw: np.ndarray) -> np.ndarray:
    out = np.full(raw.shape, 250, dtype=np.int64)
    for r, t in table.items():
        out[raw == r] = t
    return out


def make_cityscapes(root: Path, split: str = "train", labels: bool = True) -> list[str]:
    names = []
    for k, (city, seq) in enumerate([("bravo", 1), ("alpha", 3), ("alpha", 0)]):
        stem = f"{city}_{seq:06d}_000019_"
        save(root / "leftImg8bit" / split / city / f"{stem}leftImg8bit.png", rgb(k))
        if labels:
            save(root / "gtFine" / split / city / f"{stem}gtFine_labelIds.png", np.roll(CS_RAW, k))
            save(root / "gtFine" / split / city / f"{stem}gtFine_color.png", rgb(9))  # ignored
        names.append(f"{stem}leftImg8bit.png")
    return names


def make_gta5(root: Path, n: int = 3, size: tuple[int, int] = (W, H)) -> None:
    for i in range(1, n + 2):  # one extra frame beyond N: not listed
        save(root / "images" / f"{i:05d}.png", rgb(i, *size))
        save(root / "labels" / f"{i:05d}.png", np.roll(RAW, i), mode="P")
    scipy.io.savemat(str(root / "split.mat"), {"trainIds": np.arange(1, n)[:, None],
                                           "valIds": np.array([[n]]), "testIds": np.zeros((0, 1))})


def synthia_label(seed: int) -> np.ndarray:
    """16-bit H×W×3 in OpenCV BGR order: class ids in R (index 2), instance ids elsewhere."""
    r = np.random.default_rng(seed)
    out = np.stack([r.integers(0, 60000, (H, W)), r.integers(0, 60000, (H, W)),
                    (np.arange(H * W) % 23).reshape(H, W)], axis=2)
    return np.roll(out, seed, axis=1).astype(np.uint16)


def make_synthia(root: Path, names=("0000002.png", "0000001.png")) -> None:
    for k, name in enumerate(names):
        save(root / "RGB" / name, rgb(k))
        (root / "GT" / "LABELS").mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(root / "GT" / "LABELS" / name), synthia_label(k))


# ---------------------------------------------------------------- Cityscapes

@pytest.mark.parametrize("n_class", [19, 16, 13])
def test_cityscapes_items_and_mapping(tmp_path, n_class):
    names = make_cityscapes(tmp_path)
    ds = CityscapesDataset(tmp_path, "train", n_class=n_class, size=None)
    assert [s.name for s in ds.samples] == sorted(names)  # alpha_0, alpha_3, bravo_1
    item = ds[0]
    assert item["name"] == "alpha_000000_000019_leftImg8bit.png"
    assert item["img"].dtype == torch.float32 and item["img"].shape == (3, H, W)
    np.testing.assert_array_equal(item["img"].permute(1, 2, 0).numpy() * 255, rgb(2).astype(np.float32))
    assert item["label"].dtype == torch.int64
    want = map_with(expected_map(n_class, 1), np.roll(CS_RAW, 2))
    np.testing.assert_array_equal(item["label"].numpy(), want)
    img, lbl = ds.load_pil(2)
    assert img.mode == "RGB" and img.size == (W, H) and lbl.dtype == np.uint8
    np.testing.assert_array_equal(lbl, map_with(expected_map(n_class, 1), np.roll(CS_RAW, 0)))


def test_cityscapes_unlabelled_split_and_resize(tmp_path):
    make_cityscapes(tmp_path, split="test", labels=False)
    with pytest.raises(DatasetError, match="alpha_000000_000019_gtFine_labelIds.png"):
        CityscapesDataset(tmp_path, "test")
    ds = CityscapesDataset(tmp_path, "test", size=(4, 3), labels=False)
    item = ds[1]
    assert item["img"].shape == (3, 3, 4)
    assert torch.equal(item["label"], torch.full((3, 4), 250, dtype=torch.int64))


def test_cityscapes_missing_root_and_split(tmp_path):
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "nowhere"))):
        CityscapesDataset(tmp_path / "nowhere")
    make_cityscapes(tmp_path)
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "leftImg8bit" / "val"))):
        CityscapesDataset(tmp_path, "val")


def test_cityscapes_empty_split(tmp_path):
    (tmp_path / "leftImg8bit" / "val" / "city").mkdir(parents=True)
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "leftImg8bit" / "val"))):
        CityscapesDataset(tmp_path, "val", labels=False)


def test_cityscapes_image_without_label(tmp_path):
    make_cityscapes(tmp_path)
    lbl = tmp_path / "gtFine/train/alpha/alpha_000003_000019_gtFine_labelIds.png"
    lbl.unlink()
    with pytest.raises(DatasetError, match=re.escape(str(lbl))):
        CityscapesDataset(tmp_path)


def test_cityscapes_label_without_image(tmp_path):
    make_cityscapes(tmp_path)
    img = tmp_path / "leftImg8bit/train/alpha/alpha_000003_000019_leftImg8bit.png"
    img.unlink()
    with pytest.raises(DatasetError, match="alpha_000003_000019_gtFine_labelIds.png"):
        CityscapesDataset(tmp_path)


def test_cityscapes_unreadable_image(tmp_path):
    make_cityscapes(tmp_path)
    bad = tmp_path / "leftImg8bit/train/alpha/alpha_000000_000019_leftImg8bit.png"
    bad.write_bytes(b"\x89PNG garbage, not an image")
    ds = CityscapesDataset(tmp_path, size=None)
    ds[1]  # other items still load
    with pytest.raises(DatasetError, match=re.escape(str(bad))):
        ds[0]


def test_cityscapes_label_value_outside_map(tmp_path):
    make_cityscapes(tmp_path)
    lbl = tmp_path / "gtFine/train/bravo/bravo_000001_000019_gtFine_labelIds.png"
    Image.fromarray(np.full((H, W), 300, dtype=np.uint16)).save(lbl)  # 16-bit, > 255
    ds = CityscapesDataset(tmp_path, size=None)
    with pytest.raises(DatasetError, match=re.escape(str(lbl)) + ".*300"):
        ds[2]


@pytest.mark.parametrize("bad", [34, 99, 255])
def test_cityscapes_id_outside_the_id_table_names_the_file(tmp_path, bad):
    """34..255 fit in a uint8 PNG but are no Cityscapes labelId: an error, not a silent 250
    that would drop the pixels out of the metrics."""
    make_cityscapes(tmp_path)
    lbl = tmp_path / "gtFine/train/bravo/bravo_000001_000019_gtFine_labelIds.png"
    raw = CS_RAW.copy()
    raw[2, 3] = bad
    save(lbl, raw)
    ds = CityscapesDataset(tmp_path, size=None)
    ds[0], ds[1]  # the other items still load
    for read in (lambda: ds[2], lambda: ds.load_label(2), lambda: ds.load_pil(2)):
        with pytest.raises(DatasetError, match=re.escape(str(lbl)) + f".* id {bad}, .*0..33") as err:
            read()
        assert "\n" not in str(err.value)


def test_synthia_id_outside_the_id_table_names_the_file(tmp_path):
    make_synthia(tmp_path)
    lbl = tmp_path / "GT/LABELS/0000001.png"
    label = synthia_label(1)
    label[0, 0, 2] = 23  # class channel (BGR index 2): SYNTHIA ids stop at 22
    assert cv2.imwrite(str(lbl), label)
    ds = SynthiaDataset(tmp_path, size=None)
    ds[1]
    with pytest.raises(DatasetError, match=re.escape(str(lbl)) + ".* id 23, .*0..22"):
        ds[0]


W2, H2 = 16, 8


def _shrink_label(lbl: Path, kind: str) -> None:
    """Rewrite ``lbl`` at half its image's size (8x4 labels for 16x8 images)."""
    if kind == "synthia":
        assert cv2.imwrite(str(lbl), synthia_label(0)[: H2 // 2, : W2 // 2])
    else:
        save(lbl, RAW[: H2 // 2, : W2 // 2])


@pytest.mark.parametrize("kind", ["cityscapes", "gta5", "synthia"])
@pytest.mark.parametrize("size", [None, (W2, H2), (4, 2)])
def test_label_of_another_size_than_its_image_names_both(tmp_path, kind, size):
    """A label is never stretched onto its image (the old nearest resize hid wrong files);
    the configured ``size`` still resizes both, but only after the native sizes matched."""
    if kind == "cityscapes":
        stem = "alpha_000000_000019_"
        img = tmp_path / "leftImg8bit/train/alpha" / f"{stem}leftImg8bit.png"
        lbl = tmp_path / "gtFine/train/alpha" / f"{stem}gtFine_labelIds.png"
        save(img, rgb(0, W2, H2))
    elif kind == "gta5":
        make_gta5(tmp_path, n=1, size=(W2, H2))
        img, lbl = tmp_path / "images/00001.png", tmp_path / "labels/00001.png"
    else:
        img, lbl = tmp_path / "RGB/0000001.png", tmp_path / "GT/LABELS/0000001.png"
        save(img, rgb(0, W2, H2))
        lbl.parent.mkdir(parents=True)
    _shrink_label(lbl, kind)
    ds = build_dataset(kind, tmp_path, size=size)
    want = re.escape(f"label {lbl} is {W2 // 2}x{H2 // 2} but its image {img} is {W2}x{H2}")
    for read in (lambda: ds[0], lambda: ds.load_label(0), lambda: ds.load_pil(0)):
        with pytest.raises(DatasetError, match=want):
            read()


def test_load_label_alone_uses_the_configured_or_native_size(tmp_path):
    make_cityscapes(tmp_path)
    want = map_with(expected_map(19, 1), np.roll(CS_RAW, 2)).astype(np.uint8)
    np.testing.assert_array_equal(CityscapesDataset(tmp_path, size=None).load_label(0), want)
    resized = CityscapesDataset(tmp_path, size=(2 * W, 2 * H)).load_label(0)
    np.testing.assert_array_equal(resized, np.kron(want, np.ones((2, 2), np.uint8)))
    unlabelled = CityscapesDataset(tmp_path, size=None, labels=False).load_label(0)
    assert unlabelled.shape == (H, W) and (unlabelled == 250).all()


def test_hard_pseudo_label_of_another_size_is_an_error(tmp_path):
    """Hard labels are written at the items' size; another size is not resized into place."""
    make_cityscapes(tmp_path)
    ds = CityscapesDataset(tmp_path, size=None, labels=False)

    class Store:
        path = tmp_path / "hard.h5"

        def __init__(self, hw):
            self.hw = hw

        def get(self, name):
            return np.zeros(self.hw, np.uint8)

    ok = TrainingDataset(ds, resize_base=W, crop_wh=(W, H), strong=False,
                         hard_labels=Store((H, W)))
    assert ok[0]["lp"].shape == (H, W)
    bad = TrainingDataset(ds, resize_base=W, crop_wh=(W, H), strong=False,
                          hard_labels=Store((H // 2, W // 2)))
    with pytest.raises(DatasetError, match=re.escape(f"alpha_000000_000019_leftImg8bit.png in "
                                                     f"{Store.path} is {W // 2}x{H // 2}")):
        bad[0]


# ---------------------------------------------------------------- GTA5

def test_gta5_items_mapping_and_p_mode(tmp_path):
    make_gta5(tmp_path, n=3)
    ds = GTA5Dataset(tmp_path, size=None)
    assert len(ds) == 3 and [s.name for s in ds.samples] == ["00001.png", "00002.png", "00003.png"]
    assert Image.open(ds.samples[0].label).mode == "P"
    item = ds[2]
    assert item["name"] == "00003.png"
    np.testing.assert_array_equal(item["label"].numpy(), map_with(expected_map(19, 1), np.roll(RAW, 3)))
    assert set(np.unique(item["label"].numpy())) == set(range(19)) | {250}


def test_gta5_resize_image_bilinear_label_nearest(tmp_path):
    make_gta5(tmp_path, n=1, size=(2 * W, 2 * H))
    Image.fromarray(np.kron(RAW, np.ones((2, 2), np.uint8))).save(tmp_path / "labels/00001.png")
    ds = GTA5Dataset(tmp_path, size=(W, H))
    item = ds[0]
    assert item["img"].shape == (3, H, W)
    want_img = np.asarray(Image.fromarray(rgb(1, 2 * W, 2 * H)).resize((W, H), Image.BILINEAR))
    np.testing.assert_array_equal(item["img"].permute(1, 2, 0).numpy() * 255, want_img.astype(np.float32))
    np.testing.assert_array_equal(item["label"].numpy(), map_with(expected_map(19, 1), RAW))
    up = GTA5Dataset(tmp_path, size=(4 * W, 4 * H))[0]["label"].numpy()  # nearest upsampling
    np.testing.assert_array_equal(up, np.kron(map_with(expected_map(19, 1), RAW), np.ones((4, 4))))


def test_gta5_label_outside_domain(tmp_path):
    make_gta5(tmp_path, n=2)
    lbl = tmp_path / "labels/00002.png"
    save(lbl, np.full((H, W), 35, np.uint8))
    ds = GTA5Dataset(tmp_path, size=None)
    ds[0]
    with pytest.raises(DatasetError, match=re.escape(str(lbl)) + ".*35"):
        ds[1]


def test_gta5_missing_files(tmp_path):
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "gta"))):
        GTA5Dataset(tmp_path / "gta")
    make_gta5(tmp_path, n=3)
    (tmp_path / "labels/00002.png").unlink()
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "labels/00002.png"))):
        GTA5Dataset(tmp_path)
    (tmp_path / "images/00002.png").unlink()
    save(tmp_path / "labels/00002.png", RAW)
    with pytest.raises(DatasetError, match=re.escape(f"{tmp_path / 'labels/00002.png'} has no image")):
        GTA5Dataset(tmp_path)
    (tmp_path / "split.mat").unlink()
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "split.mat"))):
        GTA5Dataset(tmp_path)


def test_gta5_bad_and_empty_split_file(tmp_path):
    make_gta5(tmp_path, n=1)
    (tmp_path / "split.mat").write_bytes(b"not a mat file")
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "split.mat"))):
        GTA5Dataset(tmp_path)
    scipy.io.savemat(str(tmp_path / "split.mat"), {k: np.zeros((0, 1)) for k in ("trainIds", "valIds", "testIds")})
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "split.mat"))):
        GTA5Dataset(tmp_path)


# ---------------------------------------------------------------- SYNTHIA

@pytest.mark.parametrize("n_class", [19, 16, 13])
def test_synthia_16bit_labels(tmp_path, n_class):
    make_synthia(tmp_path)
    ds = SynthiaDataset(tmp_path, n_class=n_class, size=None)
    assert [s.name for s in ds.samples] == ["0000001.png", "0000002.png"]  # sorted
    raw = synthia_label(1)[:, :, 2]
    header = ds.samples[0].label.read_bytes()[:26]
    assert raw.max() == 22 and header[24:26] == bytes([16, 2])  # PNG IHDR: 16-bit RGB
    np.testing.assert_array_equal(ds[0]["label"].numpy(), map_with(expected_map(n_class, 4), raw))


def test_synthia_pairing_errors(tmp_path):
    make_synthia(tmp_path)
    (tmp_path / "RGB/0000001.png").unlink()
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "GT/LABELS/0000001.png"))):
        SynthiaDataset(tmp_path)
    make_synthia(tmp_path)
    (tmp_path / "GT/LABELS/0000002.png").unlink()
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "GT/LABELS/0000002.png"))):
        SynthiaDataset(tmp_path)


def test_synthia_unreadable_label_and_empty(tmp_path):
    make_synthia(tmp_path)
    bad = tmp_path / "GT/LABELS/0000001.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=re.escape(str(bad))):
        SynthiaDataset(tmp_path, size=None)[0]
    for d in ("RGB", "GT/LABELS"):
        for f in (tmp_path / d).iterdir():
            f.unlink()
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "RGB"))):
        SynthiaDataset(tmp_path)


# ---------------------------------------------------------------- build_dataset

def test_build_dataset(tmp_path):
    make_cityscapes(tmp_path / "cs")
    make_gta5(tmp_path / "gta", n=2)
    make_synthia(tmp_path / "syn")
    cs = build_dataset("cityscapes", tmp_path / "cs", "train", n_class=16, size=(4, 3))
    assert isinstance(cs, CityscapesDataset) and cs.n_class == 16 and cs[0]["img"].shape == (3, 3, 4)
    gta = build_dataset("gta5", tmp_path / "gta", split="val")
    assert isinstance(gta, GTA5Dataset) and len(gta) == 2 and gta[0]["img"].shape == (3, H, W)
    syn = build_dataset("synthia", tmp_path / "syn", n_class=16)
    assert isinstance(syn, SynthiaDataset) and syn.n_class == 16
    with pytest.raises(ValueError, match="kitti"):
        build_dataset("kitti", tmp_path)
    with pytest.raises(ValueError, match="19"):
        build_dataset("gta5", tmp_path / "gta", n_class=16)
