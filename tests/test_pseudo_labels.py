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
from proda.integrity import DamagedArtifactError
from proda.models import DeepLabV2
from proda.runtime import eval_mode
from proda.pseudo_labels import (HardLabelStore, MissingPseudoLabelError, PseudoLabelStoreError,
                                 SoftLabelStore, flip_averaged_probs, generate_hard, generate_soft)

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
    assert ds.chunks == shape and ds.compression == "gzip" and ds.fletcher32  # one chunk per image


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
        assert dict(h5.attrs) == {"n_class": C, "kind": "soft", "dtype": "float16",
                                  "checkpoint_sha256": digest}
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
        assert torch.equal(got, expected.half().float())  # exactly the float16 values


def test_hard_labels_flip_tta_matches_hand_computation(tmp_path, model):
    items = _items()
    path = generate_hard(model, items, tmp_path / "hard.h5", n_class=C, batch_size=2,
                         attrs={"checkpoint_sha256": "cd" * 32}, progress=False)
    path_noflip = generate_hard(model, items, tmp_path / "hard_noflip.h5", n_class=C, flip=False,
                                batch_size=3, progress=False)
    with h5py.File(path, "r") as h5:
        assert h5.attrs["n_class"] == C and h5.attrs["kind"] == "hard" and h5.attrs["flip"]
        assert h5.attrs["checkpoint_sha256"] == "cd" * 32
        np.testing.assert_array_equal(h5.attrs["threshold_levels"],
                                      np.float16([0.5 + 0.01 * i for i in range(50)]))
        for item in items:
            _check_h5_dataset(h5[item["name"]]["label"], np.uint8, item["img"].shape[1:])
            _check_h5_dataset(h5[item["name"]]["level"], np.uint8, item["img"].shape[1:])
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
            conf = st.confidence(item["name"]).astype(np.float32)  # rounded up to a level
            top = top2[0].numpy()
            assert st.confidence(item["name"]).dtype == np.float16
            assert (conf >= top - 1e-3).all() and (conf <= np.maximum(top, 0.5) + 0.011).all()
            label = st.get(item["name"])
            assert label.dtype == np.uint8 and label.shape == tuple(size)
            assert clear.mean() > 0.9
            np.testing.assert_array_equal(label[clear], p.argmax(0).numpy()[clear])
        diff = (store.confidence(item["name"]).astype(np.float32)
                - store_nf.confidence(item["name"]).astype(np.float32))
        flip_changed |= bool((np.abs(diff) > 2e-2).any())
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
    ceilings = [at, at, at, f16(0.96)]  # the confidence rounded up to the next level
    for item, p, ceiling in zip(items, confs, ceilings):
        assert (store.confidence(item["name"]) == ceiling).all()
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


# ------------------------------------------------------------------ compact formats, safety
class _Identity(nn.Module):
    """The image is the logit map: lets a test choose the softmax maps exactly."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"feat": x, "out": x}


def _logit_fields(n: int, n_class: int, size: tuple[int, int], seed: int = 0) -> list[torch.Tensor]:
    """Smooth random logit fields (coarse noise, bilinearly upsampled, plus fine noise):
    softmax maps with large confident regions and gradual boundaries, like a network's."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, n_class, size[0] // 8 + 2, size[1] // 8 + 2, generator=g) * 8
    z = F.interpolate(coarse, size=size, mode="bilinear", align_corners=True)
    return list(z + 0.3 * torch.randn(z.shape, generator=g))


def _level_boundary_field() -> torch.Tensor:
    """5-class logits whose float16 confidences hit every default level and both float16
    neighbours of it (the cases where ``≤`` in float16 decides)."""
    f16 = np.float16
    confs = [f16(0.3), f16(0.5), f16(0.999), f16(1.0)]
    for t in (0.5 + 0.01 * i for i in range(50)):
        at = f16(t)
        confs += [np.nextafter(at, f16(0)), at, np.nextafter(at, f16(1))]
    p = torch.tensor([float(c) for c in confs], dtype=torch.float64).clamp(1e-6, 1 - 1e-6)
    x0 = torch.log(p / (1 - p)).float()
    # P(class 0) = sigmoid(x0) in column 0, P(class 1) = the same in column 1; classes 2..4 ≈ 0
    logits = torch.full((5, len(confs), 2), -60.0)
    logits[:2] = 0
    logits[0, :, 0], logits[1, :, 1] = x0, x0
    return logits


def test_hard_levels_match_float16_threshold_for_every_level(tmp_path):
    """Thresholds 0.50..0.99: the kept masks and labels equal the official float16 path."""
    items = [{"img": z, "name": f"{i}.png"} for i, z in enumerate(_logit_fields(3, 5, (48, 80)))]
    items.append({"img": _level_boundary_field(), "name": "boundary.png"})
    store = HardLabelStore(generate_hard(_Identity(), items, tmp_path / "h.h5", n_class=5,
                                         batch_size=2, progress=False))
    hits = 0
    for item in items:
        n_class = item["img"].shape[0]
        conf, label = flip_averaged_probs(_Identity(), item["img"][None], n_class).max(dim=1)
        conf16, label = conf[0].half().numpy(), label[0].to(torch.uint8).numpy()  # the float16 path
        spread = conf16.astype(np.float32)
        assert spread.min() <= 0.5 and spread.max() > 0.99  # every level is crossed somewhere
        for i in range(50):
            t = round(0.5 + 0.01 * i, 2)
            expected = label.copy()
            expected[conf16 <= np.float16(t)] = 250
            got = store.get(item["name"], t)
            assert got.dtype == np.uint8
            np.testing.assert_array_equal(got, expected, err_msg=f"{item['name']} t={t}")
            hits += int((conf16 == np.float16(t)).sum())
        np.testing.assert_array_equal(store.get(item["name"]), label)
        np.testing.assert_array_equal(store.get(item["name"], 0), label)
    assert hits >= 50  # confidences exactly at a threshold were exercised (and dropped)


def test_hard_threshold_outside_levels_is_refused(tmp_path):
    items = [{"img": z, "name": f"{i}.png"} for i, z in enumerate(_logit_fields(1, 3, (16, 24)))]
    store = HardLabelStore(generate_hard(_Identity(), items, tmp_path / "h.h5", n_class=3,
                                         progress=False))
    np.testing.assert_array_equal(store.get("0.png", 0.9502), store.get("0.png", 0.95))  # same float16
    assert store.check_threshold(0.95) == 45 and store.check_threshold(-1) is None
    for bad in (0.955, 0.3, 0.999, 1.0):
        with pytest.raises(PseudoLabelStoreError) as err:
            store.get("0.png", bad)
        msg = str(err.value)
        assert str(tmp_path / "h.h5") in msg and "stage2.threshold" in msg and f"{bad:g}" in msg
        assert "\n" not in msg
    at = HardLabelStore(tmp_path / "h.h5", threshold=0.95)  # the store's own threshold, checked on opening
    np.testing.assert_array_equal(at.get("0.png"), store.get("0.png", 0.95))
    with pytest.raises(PseudoLabelStoreError, match="stage2.threshold"):
        HardLabelStore(tmp_path / "h.h5", threshold=0.955)
    custom = HardLabelStore(generate_hard(_Identity(), items, tmp_path / "c.h5", n_class=3,
                                          thresholds=[0.955, 0.3], progress=False))
    assert custom.levels.tolist() == [np.float16(0.3), np.float16(0.955)]
    conf16 = flip_averaged_probs(_Identity(), items[0]["img"][None], 3).amax(1)[0].half().numpy()
    for t in (0.3, 0.955):
        assert ((custom.get("0.png", t) == 250) == (conf16 <= np.float16(t))).all()
    with pytest.raises(PseudoLabelStoreError):
        custom.get("0.png", 0.95)
    for bad in ([], [0.5, 1.0], [0.0], [0.99999]):
        with pytest.raises(ValueError, match="thresholds"):
            generate_hard(_Identity(), items, tmp_path / "x.h5", n_class=3, thresholds=bad,
                          progress=False)


def test_legacy_float16_confidence_store_is_read(tmp_path):
    label = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    conf = np.float16([[0.94970703125, 0.9501953125], [0.95068359375, 0.3]])
    with h5py.File(tmp_path / "old.h5", "w") as h5:
        h5.attrs.update({"n_class": 3, "kind": "hard", "flip": True})
        h5.create_group("a.png").create_dataset("label", data=label)
        h5["a.png"].create_dataset("confidence", data=conf)
    store = HardLabelStore(tmp_path / "old.h5")
    assert store.levels is None
    np.testing.assert_array_equal(store.confidence("a.png"), conf)
    np.testing.assert_array_equal(store.get("a.png", 0.95), [[250, 250], [2, 250]])
    np.testing.assert_array_equal(store.get("a.png", 0.31), [[0, 1], [2, 250]])
    np.testing.assert_array_equal(store.get("a.png", 0.29), label)


def _rectified(q: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Stage 1's label path: bilinear-AC up to the image, down ×0.25, argmax of w·q."""
    up_q = F.interpolate(q[None], size=(q.shape[1] * 8, q.shape[2] * 8), mode="bilinear",
                         align_corners=True)
    q4 = F.interpolate(up_q, size=(q.shape[1] * 2, q.shape[2] * 2), mode="bilinear",
                       align_corners=True)
    return (q4 if weights is None else q4 * weights).argmax(1)


@pytest.mark.parametrize("soft_dtype", ["float16", "float32"])
def test_soft_store_keeps_the_rectified_labels(tmp_path, soft_dtype):
    """The stored soft labels are exactly the float16 (or float32) softmax, so stage 1's
    rectified and unrectified argmax equal those of the uncompressed maps."""
    fields = _logit_fields(2, 19, (33, 65), seed=3)
    items = [{"img": z, "name": f"{i}.png"} for i, z in enumerate(fields)]
    store = SoftLabelStore(generate_soft(_Identity(), items, tmp_path / "s.h5", n_class=19,
                                         soft_dtype=soft_dtype, progress=False))
    assert store.attrs["dtype"] == soft_dtype
    g = torch.Generator().manual_seed(0)
    for item, z in zip(items, fields):
        exact = z.float().softmax(0)
        reference = exact.half().float() if soft_dtype == "float16" else exact
        got = store.get(item["name"])
        assert got.dtype == torch.float32 and torch.equal(got, reference)
        dist = torch.rand(1, 19, 66, 130, generator=g) * 12  # distances to the prototypes
        weights = torch.softmax(-(dist - dist.amin(1, keepdim=True)), dim=1)
        for w in (weights, None):
            assert torch.equal(_rectified(got, w), _rectified(reference, w))
    with pytest.raises(ValueError, match="soft_dtype"):
        generate_soft(_Identity(), items, tmp_path / "x.h5", n_class=19, soft_dtype="uint8",
                      progress=False)


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_check_names_refuses_another_split(tmp_path, kind):
    items = [{"img": z, "name": f"img{i}.png"} for i, z in enumerate(_logit_fields(3, 3, (16, 24)))]
    gen, cls = (generate_soft, SoftLabelStore) if kind == "soft" else (generate_hard, HardLabelStore)
    store = cls(gen(_Identity(), items, tmp_path / "s.h5", n_class=3, progress=False))
    store.check_names(["img2.png", "img0.png", "img1.png"])  # order does not matter
    with pytest.raises(PseudoLabelStoreError) as err:
        store.check_names(["img0.png", "img1.png", "img2.png", "img3.png", "img9.png"])
    msg = str(err.value)
    assert str(tmp_path / "s.h5") in msg and "\n" not in msg
    assert "2 of the 5 expected images missing (first: 'img3.png')" in msg and "extra" not in msg
    with pytest.raises(PseudoLabelStoreError, match=r"1 images not in the split \(first: 'img1.png'\)"):
        store.check_names(["img0.png", "img2.png"])
    with pytest.raises(PseudoLabelStoreError, match="missing .first: 'a.png'.; 3 images not in"):
        store.check_names(["a.png"])


def _read_all(path, cls) -> None:
    store = cls(path)
    for name in store.names():
        store.get(name) if cls is SoftLabelStore else store.get(name, 0.95)


@pytest.mark.parametrize("kind", ["soft", "hard"])
@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_store_fails_with_one_line_naming_the_file(tmp_path, kind, damage):
    items = [{"img": z, "name": f"img{i}.png"} for i, z in enumerate(_logit_fields(4, 5, (64, 96)))]
    gen, cls = (generate_soft, SoftLabelStore) if kind == "soft" else (generate_hard, HardLabelStore)
    path = gen(_Identity(), items, tmp_path / "s.h5", n_class=5, progress=False)
    _read_all(path, cls)  # intact: fine
    data = bytearray(path.read_bytes())
    if damage == "flip":
        mid = len(data) // 2
        data[mid:mid + 64] = bytes(b ^ 0x5A for b in data[mid:mid + 64])
    else:
        data = data[:len(data) * 2 // 3]
    path.write_bytes(bytes(data))
    with pytest.raises(PseudoLabelStoreError) as err:
        _read_all(path, cls)
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg
    if damage == "flip":
        assert "img" in msg  # the image whose data is damaged


@pytest.mark.parametrize("member", ["label", "level"])
def test_random_bytes_in_a_hard_label_store_fail_in_one_line_naming_the_file(tmp_path, member):
    """uint8 label and uint8 confidence level per image, each checksummed: 64 random bytes in
    either's data are a DamagedArtifactError naming the file and the image."""
    items = [{"img": z, "name": f"img{i}.png"} for i, z in enumerate(_logit_fields(2, 5, (64, 96)))]
    path = generate_hard(_Identity(), items, tmp_path / "hard.h5", n_class=5, progress=False)
    with h5py.File(path) as h5:
        assert h5["img1.png/label"].dtype == np.uint8 and h5["img1.png/level"].dtype == np.uint8
        start = h5[f"img1.png/{member}"].id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(start)
        fh.write(np.random.default_rng(1).bytes(64))
    store = HardLabelStore(path)
    store.get("img0.png", 0.95)  # the intact image still reads
    with pytest.raises(DamagedArtifactError) as err:
        store.get("img1.png", 0.95)
    msg = str(err.value)
    assert isinstance(err.value, PseudoLabelStoreError) and "\n" not in msg
    assert msg.startswith(f"pseudo-label store {path} is damaged (cannot read image 'img1.png': ")


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_not_an_hdf5_file_is_a_damaged_store(tmp_path, kind):
    path = tmp_path / "labels.h5"
    path.write_bytes(np.random.default_rng(2).bytes(4096))
    with pytest.raises(DamagedArtifactError, match=r"pseudo-label store .*labels\.h5 is damaged \(cannot open"):
        (SoftLabelStore if kind == "soft" else HardLabelStore)(path)


def test_probabilities_are_float32_under_bf16_autocast(tmp_path, model):
    """The forward runs under the caller's bf16 autocast (bf16 logits), but the softmax,
    upsampling, flip average and argmax are float32: the probabilities equal the float32
    computation from the same logits and take many distinct values (bf16 gives ~100)."""
    items = _items(sizes=[(40, 56)] * 2, seed=3)
    x = torch.stack([item["img"] for item in items])
    with eval_mode(model), torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits, flipped = model(x)["out"], model(x.flip(-1))["out"]
        probs = flip_averaged_probs(model, x, C)
        generate_soft(model, items, tmp_path / "soft.h5", n_class=C, progress=False, soft_dtype="float32")
        generate_hard(model, items, tmp_path / "hard.h5", n_class=C, progress=False)
    assert logits.dtype == torch.bfloat16

    def up(z: torch.Tensor) -> torch.Tensor:
        return F.interpolate(z.float().softmax(dim=1), size=x.shape[-2:], mode="bilinear", align_corners=True)

    expected = (up(logits) + up(flipped).flip(-1)) / 2
    assert probs.dtype == torch.float32 and torch.equal(probs, expected)
    assert probs.unique().numel() > 1000
    soft = SoftLabelStore(tmp_path / "soft.h5")
    for item, native in zip(items, logits.float().softmax(dim=1)):
        assert torch.equal(soft.get(item["name"]), native)
    hard = HardLabelStore(tmp_path / "hard.h5")
    for item, p in zip(items, expected):
        label = hard.get(item["name"], 0.9)
        conf, want = p.max(dim=0)
        want[conf.half() <= np.float16(0.9)] = 250
        assert np.array_equal(label, want.numpy().astype(np.uint8))
