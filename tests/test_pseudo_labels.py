"""Soft / hard pseudo-label generation and HDF5 stores (reference §6.1, §6.2, Q10, Q16, Q17)."""
from __future__ import annotations

import hashlib
import pickle

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from proda.files import file_sha256
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from proda.data.labels import colorize
from proda.models import DeepLabV2
from proda.pseudo_labels import (HardLabelStore, MissingPseudoLabelError, PseudoLabelStoreError,
                                 SoftLabelStore, generate_hard, generate_soft)

torch.set_num_threads(1)
C = 3
SIZES = [(40, 56), (33, 47), (40, 56)]  # mixed sizes: a batch of 2 holds two shapes


def _items(sizes=SIZES, seed=0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"img": torch.rand(3, h, w, generator=g), "label": torch.zeros(h, w, dtype=torch.long),
             "name": f"img{i}_leftImg8bit.png"} for i, (h, w) in enumerate(sizes)]


@pytest.fixture(scope="module")
def model() -> DeepLabV2:
    torch.manual_seed(0)
    net = DeepLabV2(C, backbone="resnet18", base_width=8, head_channels=32)
    for m in net.modules():  # spread the logits so that argmax and softmax are far from uniform
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
    return net


def _eval_out(model: nn.Module, img: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(img[None])["out"][0]


def _check_h5_dataset(ds: h5py.Dataset, dtype, shape) -> None:
    assert ds.dtype == dtype and ds.shape == shape
    assert ds.chunks is not None and ds.compression == "gzip"


class _Failing(Dataset):
    def __init__(self, items: list[dict]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        if i == 2:
            raise RuntimeError("broken image 2")
        return self.items[i]


class _FromStore(Dataset):
    def __init__(self, store: SoftLabelStore) -> None:
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.store.get(self.store.names()[i])


class _FirstChannelLogits(nn.Module):
    """out = [x₀, 0, -60, …] at the input size: P(class 0) = sigmoid(x₀), class 1 if x₀ < 0."""

    def __init__(self, n_class: int = 2) -> None:
        super().__init__()
        self.n_class = n_class

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        rest = torch.full_like(x[:, :1], -60.0).expand(-1, self.n_class - 2, -1, -1)
        out = torch.cat([x[:, :1], torch.zeros_like(x[:, :1]), rest], dim=1)
        return {"feat": out, "out": out}


def test_checkpoint_digest_streams_whole_file(tmp_path):
    data = bytes(range(256)) * 41 + b"tail"
    path = tmp_path / "model.pt"
    path.write_bytes(data)
    assert file_sha256(path, chunk_size=100) == hashlib.sha256(data).hexdigest()
    assert file_sha256(path) != hashlib.sha256(data[:-1]).hexdigest()


def test_soft_labels_are_native_softmax(tmp_path, model):
    items = _items()
    digest = "ab" * 32
    model.train()
    out = generate_soft(model, items, tmp_path / "soft.h5", n_class=C, batch_size=2,
                        attrs={"checkpoint_sha256": digest}, progress=False)
    assert model.training  # the caller's mode is restored
    assert not (tmp_path / "soft.h5.tmp").exists()
    with h5py.File(out, "r") as h5:
        assert dict(h5.attrs) == {"n_class": C, "kind": "soft", "checkpoint_sha256": digest}
        for item in items:
            h, w = _eval_out(model, item["img"]).shape[-2:]
            _check_h5_dataset(h5[item["name"]], np.float16, (C, h, w))
    store = SoftLabelStore(out)
    assert store.n_class == C and store.attrs["checkpoint_sha256"] == digest
    assert store.names() == sorted(i["name"] for i in items) and len(store) == 3
    for item in items:
        expected = _eval_out(model, item["img"]).softmax(0)
        got = store.get(item["name"])
        assert got.dtype == torch.float32 and got.shape == expected.shape
        assert expected.max() - expected.min() > 0.5  # far from uniform: the check has teeth
        torch.testing.assert_close(got, expected, atol=1e-3, rtol=0)


def test_hard_labels_flip_tta_matches_hand_computation(tmp_path, model):
    items = _items()
    path = generate_hard(model, items, tmp_path / "hard.h5", n_class=C, batch_size=2,
                         attrs={"checkpoint_sha256": "cd" * 32}, progress=False)
    path_noflip = generate_hard(model, items, tmp_path / "hard_noflip.h5", n_class=C, flip=False,
                                batch_size=3, progress=False)
    with h5py.File(path, "r") as h5:
        assert h5.attrs["n_class"] == C and h5.attrs["kind"] == "hard" and h5.attrs["flip"]
        assert h5.attrs["checkpoint_sha256"] == "cd" * 32
        for item in items:
            _check_h5_dataset(h5[item["name"]]["label"], np.uint8, item["img"].shape[1:])
            _check_h5_dataset(h5[item["name"]]["confidence"], np.float16, item["img"].shape[1:])
    store, store_nf = HardLabelStore(path), HardLabelStore(path_noflip)
    flip_changed = False
    for item in items:
        x, size = item["img"], item["img"].shape[1:]
        up = lambda logits: F.interpolate(logits.softmax(0)[None], size=size, mode="bilinear",
                                          align_corners=True)[0]
        p_plain = up(_eval_out(model, x))
        p_flip = torch.flip(up(_eval_out(model, torch.flip(x, dims=[2]))), dims=[2])
        for st, p in ((store, (p_plain + p_flip) / 2), (store_nf, p_plain)):
            top2 = p.topk(2, dim=0).values
            clear = (top2[0] - top2[1] > 1e-3).numpy()
            conf = st.confidence(item["name"])
            assert conf.dtype == np.float16
            np.testing.assert_allclose(conf.astype(np.float32), top2[0].numpy(), atol=1e-3, rtol=0)
            label = st.get(item["name"])
            assert label.dtype == np.uint8 and label.shape == tuple(size)
            assert clear.mean() > 0.9
            np.testing.assert_array_equal(label[clear], p.argmax(0).numpy()[clear])
        diff = (store.confidence(item["name"]).astype(np.float32)
                - store_nf.confidence(item["name"]).astype(np.float32))
        flip_changed |= bool((np.abs(diff) > 1e-2).any())
    assert flip_changed  # the flip term really contributes


def _boundary_items() -> tuple[list[dict], list[float]]:
    confs = [0.94970703125, 0.9501953125, 0.9502, 0.95068359375]
    items = []
    for i, p in enumerate(confs):
        img = torch.full((3, 4, 6), float(np.log(p / (1 - p))))
        img[0, :, 3:] *= -1  # right half: class 1 wins with the same confidence
        items.append({"img": img, "name": f"{i:05d}.png"})
    return items, confs


def test_threshold_is_applied_in_float16(tmp_path):
    f16 = np.float16
    below, at, above = f16(0.94970703125), f16(0.9501953125), f16(0.95068359375)
    assert f16(0.95) == at and float(at) == 0.9501953125 and f16(0.9502) == at  # 0.9502 rounds down
    assert np.nextafter(at, f16(0)) == below and np.nextafter(at, f16(1)) == above
    assert np.float32(at) > np.float32(0.95)  # a float32 compare would keep `at`
    items, confs = _boundary_items()
    store = HardLabelStore(generate_hard(_FirstChannelLogits(), items, tmp_path / "h.h5",
                                         n_class=2, progress=False))
    expected_label = np.array([[0, 0, 0, 1, 1, 1]] * 4, dtype=np.uint8)
    for item, p in zip(items, confs):
        conf = store.confidence(item["name"])
        assert (conf == f16(p)).all()
        for no_cut in (-1, 0, -0.5):
            np.testing.assert_array_equal(store.get(item["name"], no_cut), expected_label)
        np.testing.assert_array_equal(store.get(item["name"]), expected_label)
        dropped = f16(p) <= at
        assert dropped == (p != 0.95068359375)
        expected = np.full_like(expected_label, 250) if dropped else expected_label
        np.testing.assert_array_equal(store.get(item["name"], 0.95), expected)
        assert (store.get(item["name"], 0.9) == expected_label).all()


def test_png_dir_holds_label_and_colour_images(tmp_path):
    items, _ = _boundary_items()
    pngs = tmp_path / "png"
    store = HardLabelStore(generate_hard(_FirstChannelLogits(19), items, tmp_path / "h.h5",
                                         n_class=19, png_dir=pngs, progress=False))
    assert sorted(p.name for p in pngs.iterdir()) == sorted(
        f"{i:05d}{suffix}.png" for i in range(4) for suffix in ("", "_color"))
    for item in items:
        label = store.get(item["name"])  # the PNG is the label before any threshold
        assert (label == np.array([[0, 0, 0, 1, 1, 1]] * 4)).all()
        with Image.open(pngs / item["name"]) as im:
            assert im.mode == "L" and im.size == (6, 4)
            np.testing.assert_array_equal(np.array(im), label)
        with Image.open(pngs / item["name"].replace(".png", "_color.png")) as im:
            assert im.mode == "RGB"
            np.testing.assert_array_equal(np.array(im), colorize(label, 19))
            assert (np.array(im)[:, 0] != np.array(im)[:, -1]).any()  # classes 0 and 1 differ


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_failure_midway_leaves_no_artifact(tmp_path, model, kind):
    out = tmp_path / "sub" / f"{kind}.h5"
    gen = generate_soft if kind == "soft" else generate_hard
    with pytest.raises(RuntimeError, match="broken image 2"):
        gen(model, _Failing(_items()), out, n_class=C, batch_size=1, progress=False)
    assert not out.exists() and not out.with_name(out.name + ".tmp").exists()
    out.write_bytes(b"previous result")  # an older artifact survives a failed rerun untouched
    with pytest.raises(RuntimeError):
        gen(model, _Failing(_items()), out, n_class=C, batch_size=1, progress=False)
    assert out.read_bytes() == b"previous result"
    assert list(out.parent.iterdir()) == [out]


def test_bad_inputs_give_clear_errors(tmp_path, model):
    items = _items(sizes=[(16, 16)] * 2)
    with pytest.raises(ValueError, match="predicts 3 classes but n_class=4"):
        generate_soft(model, items, tmp_path / "s.h5", n_class=4, progress=False)
    assert not (tmp_path / "s.h5").exists()
    items[1]["name"] = items[0]["name"]
    with pytest.raises(ValueError, match="duplicate image name 'img0_leftImg8bit.png'"):
        generate_hard(model, items, tmp_path / "h.h5", n_class=C, progress=False)
    with pytest.raises(ValueError, match="reserved"):
        generate_soft(model, items[:1], tmp_path / "s.h5", n_class=C, attrs={"kind": "x"},
                      progress=False)


def test_store_errors_name_file_and_image(tmp_path, model):
    soft = generate_soft(model, _items(sizes=[(16, 16)]), tmp_path / "s.h5", n_class=C,
                         progress=False)
    store = SoftLabelStore(soft)
    with pytest.raises(KeyError) as err:
        store.get("missing_leftImg8bit.png")
    assert err.type is MissingPseudoLabelError
    assert str(soft) in str(err.value) and "'missing_leftImg8bit.png'" in str(err.value)
    assert "missing_leftImg8bit.png" not in store and "img0_leftImg8bit.png" in store
    with pytest.raises(PseudoLabelStoreError, match=f"{soft} is not a hard pseudo-label store"):
        HardLabelStore(soft)
    with pytest.raises(PseudoLabelStoreError, match="does not exist"):
        SoftLabelStore(tmp_path / "nope.h5")
    (tmp_path / "junk.h5").write_text("not hdf5")
    with pytest.raises(PseudoLabelStoreError, match="junk.h5"):
        SoftLabelStore(tmp_path / "junk.h5")


def test_soft_store_pickles_and_reopens_in_workers(tmp_path, model):
    store = SoftLabelStore(generate_soft(model, _items(), tmp_path / "s.h5", n_class=C,
                                         progress=False))
    expected = [store.get(n) for n in store.names()]  # parent holds an open handle now
    clone = pickle.loads(pickle.dumps(store))
    torch.testing.assert_close(clone.get(store.names()[1]), expected[1], rtol=0, atol=0)
    loader = DataLoader(_FromStore(store), batch_size=None, num_workers=2)
    for got, exp in zip(loader, expected, strict=True):
        torch.testing.assert_close(got, exp, rtol=0, atol=0)
