"""Toy-city benchmark: determinism, real layouts read by the real loaders, classes, voids, atomicity."""
import hashlib
import json
import re
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
from PIL import Image

from proda.data import CityscapesDataset, GTA5Dataset, SynthiaDataset
from proda.data import toycity
from proda.data.labels import IGNORE_INDEX, TO19

SMALL = dict(n_source=3, n_target_train=3, n_target_val=2, source_size=(64, 36), target_size=(64, 32))
COUNTS = dict(n_source=24, n_target_train=16, n_target_val=6)
GTA5_VOID = {0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30, 34}
CS_NAME = re.compile(r"^([a-z]+)_(\d{6})_(\d{6})_leftImg8bit\.png$")


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> dict[str, Path]:
    return toycity.generate(tmp_path_factory.mktemp("toy") / "bench", seed=0, **COUNTS)


def label_counts(ds) -> np.ndarray:
    counts = np.zeros(256, np.int64)
    for i in range(len(ds)):
        counts += np.bincount(ds.load_pil(i)[1].ravel(), minlength=256)
    return counts


def test_same_seed_is_byte_identical_other_seed_differs(tmp_path, monkeypatch):
    clock = iter(f"Mon Jan  1 00:00:0{i} 2024" for i in range(10))
    monkeypatch.setattr(time, "asctime", lambda *a: next(clock))  # scipy stamps split.mat headers
    a = toycity.generate(tmp_path / "a", seed=5, **SMALL)
    b = toycity.generate(tmp_path / "b", seed=5, **SMALL)
    c = toycity.generate(tmp_path / "c", seed=6, **SMALL)
    ha, hb, hc = (tree_hashes(p["source"].parent) for p in (a, b, c))
    assert len(ha) == 1 + 2 * 3 + 1 + 2 * (3 + 2)  # split.mat, GTA5 pairs, manifest, Cityscapes pairs
    assert ha == hb
    images = [k for k in ha if k.endswith(".png")]
    assert all(ha[k] != hc[k] for k in images)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no temp folders left


def test_layout_read_by_real_loaders(bench):
    src = GTA5Dataset(bench["source"], size=None)
    assert len(src) == 24 and [s.name for s in src.samples][:2] == ["00001.png", "00002.png"]
    img, lbl = src.load_pil(23)
    assert img.size == (160, 88) and lbl.shape == (88, 160)
    assert Image.open(src.samples[0].label).mode == "P"
    split = scipy.io.loadmat(str(bench["source"] / "split.mat"))
    assert sum(len(split[k]) for k in ("trainIds", "valIds", "testIds")) == 24
    assert np.concatenate([split[k].ravel() for k in ("trainIds", "valIds", "testIds")]).tolist() == list(range(1, 25))
    cities = {}
    for split_name, n in (("train", 16), ("val", 6)):
        ds = CityscapesDataset(bench["target"], split_name, size=None)
        assert len(ds) == n
        item = ds[n - 1]
        assert item["img"].shape == (3, 96, 192) and item["label"].shape == (96, 192)
        for s in ds.samples:
            m = CS_NAME.match(s.name)
            assert m and s.image.parent.name == m.group(1) and m.group(3) == "000019"
            assert Image.open(s.label).mode == "L"
        cities[split_name] = {s.image.parent.name for s in ds.samples}
    assert len(cities["train"]) == 2 and len(cities["val"]) == 1 and not cities["train"] & cities["val"]
    resized = GTA5Dataset(bench["source"], size=(192, 96))[0]  # a non-native size works too
    assert resized["img"].shape == (3, 96, 192)


@pytest.mark.parametrize("side", ["source", "target"])
def test_class_coverage_and_imbalance(bench, side):
    ds = GTA5Dataset(bench["source"], size=None) if side == "source" \
        else CityscapesDataset(bench["target"], "train", size=None)
    counts = label_counts(ds)[:19]
    present = counts[counts > 0]
    assert len(present) >= 10, counts
    assert present.max() > 10 * present.min()
    for tid in (0, 1, 2, 8, 10, 13):  # road, sidewalk, building, vegetation, sky, car in every split
        assert counts[tid] > 0


def test_void_pixels_map_to_ignore(bench):
    for ds, voids in ((GTA5Dataset(bench["source"], size=None), {0, 4, 5, 9}),
                      (CityscapesDataset(bench["target"], "train", size=None), {1, 3, 4, 5, 9})):
        seen = set()
        for i in range(len(ds)):
            raw = np.asarray(Image.open(ds.samples[i].label))
            label = ds[i]["label"].numpy()
            void = np.isin(raw, sorted(GTA5_VOID))
            seen |= set(np.unique(raw[void]).tolist())
            assert (label[void] == 250).all()
            assert (label[~void] < 19).all()
            assert (label[raw == 7] == 0).all() and (label[raw == 26] == 13).all()  # road, car
        assert voids <= seen, seen
    ego_rows = np.asarray(Image.open(ds.samples[0].label))[-1]
    assert (ego_rows == 1).any()  # the ego vehicle sits on the bottom border of target frames


def test_domain_shift_is_real_but_keeps_structure(bench):
    """Per-class mean colours move between domains while the brightness order of classes stays."""
    def class_means(ds):
        sums, n = np.zeros((19, 3)), np.zeros(19)
        for i in range(len(ds)):
            img, lbl = ds.load_pil(i)
            rgb = np.asarray(img, np.float64).reshape(-1, 3)
            keep = lbl.ravel() < 19
            np.add.at(sums, lbl.ravel()[keep], rgb[keep])
            n += np.bincount(lbl.ravel()[keep], minlength=19)
        return sums / np.maximum(n, 1)[:, None]

    src = class_means(GTA5Dataset(bench["source"], size=None))
    tgt = class_means(CityscapesDataset(bench["target"], "train", size=None))
    big = [0, 1, 2, 8, 9, 10]  # road, sidewalk, building, vegetation, terrain, sky
    shift = np.linalg.norm(src[big] - tgt[big], axis=1)
    assert (shift > 15).all(), shift
    assert src[10].sum() > src[0].sum() and tgt[10].sum() > tgt[0].sum()  # sky brighter than road
    assert src[8, 1] > src[8, 0] and tgt[8, 1] > tgt[8, 0]  # vegetation stays greener than red


def test_a_new_generator_version_names_new_folders(monkeypatch):
    """The data folder (and so every model trained on it) is named after the generator's version
    too: runs on an older benchmark are never reused after the generator changes."""
    from proda.config import resolve
    from proda.plan import plan, toycity_folder

    cfg = resolve(Path(__file__).resolve().parents[1] / "config.yaml", checks="schema")
    before, runs_before = toycity_folder(cfg), plan(cfg).models
    monkeypatch.setattr(toycity, "FORMAT_VERSION", toycity.FORMAT_VERSION + 1)
    after, runs_after = toycity_folder(cfg), plan(cfg).models
    assert before != after and before.rsplit("-", 1)[0] == after.rsplit("-", 1)[0]
    assert all(runs_before[s] != runs_after[s] for s in runs_before)


def test_source_lighting_zero_names_the_folder_of_no_lighting():
    from proda.config import resolve
    from proda.plan import toycity_folder

    cfg = resolve(Path(__file__).resolve().parents[1] / "config.yaml", checks="schema")
    toy = {k: v for k, v in cfg["data"]["toycity"].items() if k != "source_lighting"}
    folders = [toycity_folder({**cfg, "data": {**cfg["data"], "toycity": {**toy, **extra}}})
               for extra in ({}, {"source_lighting": 0.0}, {"source_lighting": 0.5})]
    assert folders[0] == folders[1] != folders[2]


def test_idempotent_replaces_and_refuses(tmp_path, monkeypatch):
    out = tmp_path / "bench"
    toycity.generate(out, seed=1, **SMALL)
    before = tree_hashes(out)
    stamp = (out / "gta5/images/00001.png").stat().st_mtime_ns
    toycity.generate(out, seed=1, **SMALL)  # same options: kept as is
    assert (out / "gta5/images/00001.png").stat().st_mtime_ns == stamp
    toycity.generate(out, seed=2, **SMALL)  # other options: replaced
    assert tree_hashes(out) != before and '"seed": 2' in (out / toycity.MANIFEST).read_text()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(toycity, "_write_target", boom)
    with pytest.raises(RuntimeError):
        toycity.generate(tmp_path / "half", seed=1, **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench"]  # nothing half-written

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match=re.escape(str(foreign))):
        toycity.generate(foreign, **SMALL)
    assert (foreign / "notes.txt").read_text() == "keep"


@pytest.fixture(scope="module")
def both_layouts(tmp_path_factory) -> tuple[dict[str, Path], dict[str, Path]]:
    root = tmp_path_factory.mktemp("layouts")
    options = dict(seed=4, n_source=8, n_target_train=2, n_target_val=1, source_size=(96, 48), target_size=(64, 32))
    return (toycity.generate(root / "gta5", **options),
            toycity.generate(root / "synthia", source_layout="synthia", **options))


def test_synthia_layout_read_by_real_loader(both_layouts):
    _, syn = both_layouts
    root = syn["source"]
    assert root == root.parent / "synthia" and syn["target"] == root.parent / "cityscapes"
    assert sorted(p.name for p in root.parent.iterdir()) == ["cityscapes", "synthia", toycity.MANIFEST]
    assert sorted(p.name for p in root.iterdir()) == ["GT", "RGB"]
    assert json.loads((root.parent / toycity.MANIFEST).read_text())["source_layout"] == "synthia"
    names = [f"{i:07d}.png" for i in range(1, 9)]
    assert sorted(p.name for p in (root / "RGB").iterdir()) == names
    assert sorted(p.name for p in (root / "GT" / "LABELS").iterdir()) == names
    for n_class in (16, 19):
        ds = SynthiaDataset(root, n_class=n_class, size=None)
        assert len(ds) == 8 and [s.name for s in ds.samples][:2] == names[:2]
        item = ds[7]
        assert item["img"].shape == (3, 48, 96) and item["label"].shape == (48, 96)
        assert ((item["label"] < n_class) | (item["label"] == IGNORE_INDEX)).all()
    seen_instances = 0
    for name in names:
        raw = cv2.imread(str(root / "GT" / "LABELS" / name), cv2.IMREAD_UNCHANGED)
        assert raw.dtype == np.uint16 and raw.shape == (48, 96, 3)
        cls, inst = raw[..., 2], raw[..., 1]  # BGR: RGB channel 0 = class, channel 1 = instance
        assert (raw[..., 0] == 0).all() and cls.max() <= 22
        things = np.isin(cls, [8, 10, 11, 12, 17, 18, 19])  # car, pedestrian, bicycle, motorcycle, rider, truck, bus
        assert (inst[~things] == 0).all() and (inst[things] > 0).all()
        seen_instances = max(seen_instances, len(np.unique(inst[things])))
        assert Image.open(root / "RGB" / name).mode == "RGB"
    assert seen_instances >= 2  # objects of one image are told apart


def test_synthia_labels_agree_with_gta5_labels(both_layouts):
    gta, syn = both_layouts
    g = GTA5Dataset(gta["source"], size=None)
    s19, s16 = (SynthiaDataset(syn["source"], n_class=n, size=None) for n in (19, 16))
    to19 = np.array(list(TO19[16]) + [IGNORE_INDEX] * (256 - 16), np.uint8)  # 16-class train id → 19-class
    not_in_16 = np.isin(np.arange(256), [9, 14, 16])  # terrain, truck, train
    seen = np.zeros(256, bool)
    for i in range(len(g)):
        img_g, lbl_g = g.load_pil(i)
        img_s, lbl_19 = s19.load_pil(i)
        assert np.array_equal(np.asarray(img_g), np.asarray(img_s))  # the same scene
        assert np.array_equal(lbl_g, lbl_19)
        lbl_16 = s16.load_pil(i)[1]
        assert np.array_equal(to19[lbl_16], np.where(not_in_16[lbl_g], IGNORE_INDEX, lbl_g))
        seen[np.unique(lbl_g)] = True
    assert seen[[0, 1, 2, 8, 9, 10, 13, IGNORE_INDEX]].all()  # incl. terrain and void (parking, static, …)
    # the void ids land on SYNTHIA void 0 or parking slot 13, never on a class
    raw = np.stack([cv2.imread(str(p.label), cv2.IMREAD_UNCHANGED)[..., 2] for p in s19.samples])
    gta_raw = np.stack([np.asarray(Image.open(p.label)) for p in g.samples])
    assert set(np.unique(raw[np.isin(gta_raw, sorted(GTA5_VOID))]).tolist()) <= {0, 13}
    assert (raw[gta_raw == 9] == 13).all()


def test_synthia_layout_is_deterministic_and_replaces_gta5(tmp_path):
    a = toycity.generate(tmp_path / "a", seed=5, source_layout="synthia", **SMALL)
    b = toycity.generate(tmp_path / "b", seed=5, source_layout="synthia", **SMALL)
    c = toycity.generate(tmp_path / "c", seed=6, source_layout="synthia", **SMALL)
    ha, hb, hc = (tree_hashes(p["source"].parent) for p in (a, b, c))
    assert len(ha) == 2 * 3 + 1 + 2 * (3 + 2)  # SYNTHIA pairs, manifest, Cityscapes pairs
    assert ha == hb
    assert all(ha[k] != hc[k] for k in ha if k.startswith("synthia/"))
    # the Cityscapes target does not depend on the source layout
    g = toycity.generate(tmp_path / "g", seed=5, **SMALL)
    hg = tree_hashes(g["source"].parent)
    assert {k: v for k, v in hg.items() if k.startswith("cityscapes/")} == \
        {k: v for k, v in ha.items() if k.startswith("cityscapes/")}
    # the layout is one of the options deciding reuse: a GTA5-layout folder is replaced, and back
    out = tmp_path / "g"
    stamp = (out / "gta5/images/00001.png").stat().st_mtime_ns
    assert toycity.generate(out, seed=5, **SMALL)["source"] == out / "gta5"
    assert (out / "gta5/images/00001.png").stat().st_mtime_ns == stamp  # same options: kept
    assert toycity.generate(out, seed=5, source_layout="synthia", **SMALL)["source"] == out / "synthia"
    assert tree_hashes(out) == ha and not (out / "gta5").exists()
    toycity.generate(out, seed=5, **SMALL)
    assert tree_hashes(out) == hg and not (out / "synthia").exists()


def test_manifest_without_layout_is_a_gta5_benchmark(tmp_path):
    out = tmp_path / "old"
    toycity.generate(out, seed=1, **SMALL)
    manifest = json.loads((out / toycity.MANIFEST).read_text())
    assert manifest.pop("source_layout") == "gta5"
    (out / toycity.MANIFEST).write_text(json.dumps(manifest))  # as written before the option existed
    stamp = (out / "gta5/images/00001.png").stat().st_mtime_ns
    toycity.generate(out, seed=1, **SMALL)
    assert (out / "gta5/images/00001.png").stat().st_mtime_ns == stamp


def test_source_lighting_relights_only_the_source_images(tmp_path):
    plain = toycity.generate(tmp_path / "plain", seed=3, **SMALL)
    lit = toycity.generate(tmp_path / "lit", seed=3, source_lighting=0.7, **SMALL)
    assert "source_lighting" not in json.loads((tmp_path / "plain" / toycity.MANIFEST).read_text())
    assert json.loads((tmp_path / "lit" / toycity.MANIFEST).read_text())["source_lighting"] == 0.7
    assert tree_hashes(plain["target"]) == tree_hashes(lit["target"])
    a, b = GTA5Dataset(plain["source"], size=None), GTA5Dataset(lit["source"], size=None)
    for i in range(len(a)):
        (img_a, lbl_a), (img_b, lbl_b) = a.load_pil(i), b.load_pil(i)
        assert np.array_equal(lbl_a, lbl_b)                          # same scenes
        x, y = np.asarray(img_a, np.float32), np.asarray(img_b, np.float32)
        assert not np.array_equal(x, y) and y.mean() <= x.mean() + 0.5   # factors <= 1 only darken
        assert y.std() <= x.std() + 0.5                                   # and flatten the contrast


def test_relight_applies_the_pil_enhancements():
    from PIL import ImageEnhance

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)
    assert toycity.relight(img, np.random.default_rng(1), 0.0) is img
    colour, contrast, brightness = np.random.default_rng(1).uniform(0.5, 1, 3)
    pil = Image.fromarray(img)
    for enhance, factor in ((ImageEnhance.Color, colour), (ImageEnhance.Contrast, contrast),
                            (ImageEnhance.Brightness, brightness)):
        pil = enhance(pil).enhance(factor)
    ours = toycity.relight(img, np.random.default_rng(1), 0.5).astype(int)
    assert np.abs(ours - np.asarray(pil, int)).max() <= 3   # PIL rounds to uint8 after each step


def test_bad_options():
    with pytest.raises(ValueError, match="source_lighting"):
        toycity.generate("/nonexistent/never", source_lighting=1.0)
    with pytest.raises(ValueError, match="source_layout"):
        toycity.generate("/nonexistent/never", source_layout="cityscapes")
    with pytest.raises(ValueError, match="n_target_val"):
        toycity.generate("/nonexistent/never", n_target_val=0)
    with pytest.raises(ValueError, match="source_size"):
        toycity.generate("/nonexistent/never", source_size=(8, 8))


def test_cli(tmp_path):
    import yaml

    from proda.cli import main

    options = {"seed": 3, "n_source": 2, "n_target_train": 2, "n_target_val": 1, "source_size": [48, 24],
               "target_size": [48, 24]}
    cfg = tmp_path / "toy.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"toycity": options}}))
    toy = Path(__file__).resolve().parents[1] / "config.yaml"
    assert main(["toycity", "--config", str(toy), "--config", str(cfg), "--out", str(tmp_path / "cli")]) == 0
    assert len(GTA5Dataset(tmp_path / "cli" / "gta5", size=None)) == 2
    assert Image.open(tmp_path / "cli/gta5/images/00002.png").size == (48, 24)