"""proda.predict: own images of odd sizes and types, resume, official checkpoints, and the same
label maps as ``proda evaluate --save-dir`` on Cityscapes-layout images."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from proda.cli import main as proda_cli
from proda.data.labels import CITYSCAPES_IDS, colorize, palette
from proda.data.toycity import generate
from proda.evaluate import evaluate_checkpoint
from proda.models import DeepLabV2, save_checkpoint
from proda.predict import (PredictError, find_images, model_input_size, output_paths,
                           overlay_image, predict_images, predict_job, report_items, report_name)

SMALL = {"backbone": "resnet18", "base_width": 8, "head_channels": 32}


def main(argv: list[str]) -> int:
    """``proda predict <argv>``."""
    return proda_cli(["predict", *argv])
TOY_SIZE = (96, 48)


def _model(n_class: int = 19, bn_clr: bool = False, seed: int = 0) -> DeepLabV2:
    """A tiny model with a spread-out head, so that its predictions use several classes."""
    torch.manual_seed(seed)
    model = DeepLabV2(n_class, bn_clr=bn_clr, **SMALL)
    with torch.no_grad():
        for p in model.layer5.parameters():
            p.normal_(0.0, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", _model())


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    """A tiny toy-city benchmark: its Cityscapes-layout target root."""
    out = tmp_path_factory.mktemp("toy")
    return generate(out, n_source=1, n_target_train=1, n_target_val=3, source_size=(64, 32),
                    target_size=TOY_SIZE)["target"]


def _mixed(folder: Path) -> dict[str, tuple[int, int]]:
    """Odd sizes and types (PNG, JPEG, greyscale, RGBA, 16-bit grey, nested), a damaged PNG, a
    truncated JPEG and a text file; returns the readable images' output stems and native (W, H)."""
    rng = np.random.default_rng(0)
    (folder / "sub" / "deeper").mkdir(parents=True)
    files = {"rgb.png": ((37, 23), "RGB"), "photo.jpg": ((50, 31), "RGB"), "grey.png": ((29, 41), "L"),
             "sub/alpha.png": ((33, 17), "RGBA"), "sub/deeper/wide.JPEG": ((71, 9), "RGB")}
    for name, ((w, h), mode) in files.items():
        arr = rng.integers(0, 256, (h, w, len(mode)) if len(mode) > 1 else (h, w), dtype=np.uint8)
        Image.fromarray(arr, mode).save(folder / name)
    Image.fromarray(rng.integers(0, 65536, (19, 27), dtype=np.uint16)).save(folder / "grey16.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    jpeg = (folder / "photo.jpg").read_bytes()
    (folder / "sub" / "cut.jpg").write_bytes(jpeg[:len(jpeg) // 2])  # truncated download
    (folder / "notes.txt").write_text("not an image")
    stems = {str(Path(n).with_suffix("")): size for n, (size, _) in files.items()}
    return {**stems, "grey16": (27, 19)}


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def test_mixed_folder_outputs_at_native_size(ckpt, tmp_path, capsys) -> None:
    native = _mixed(tmp_path / "in")
    out = tmp_path / "out"
    status = main(["--checkpoint", str(ckpt), str(tmp_path / "in"), "--out", str(out), "--overlay",
                   "--probs", "--size", "48", "24", "--batch-size", "2", "--device", "cpu", "--quiet"])
    err = capsys.readouterr()
    assert status == 1  # some input was unreadable
    assert "broken.png" in err.err and "cut.jpg" in err.err and "notes.txt" not in err.err + err.out
    assert "6 written, 0 skipped (outputs exist), 2 unreadable" in err.out
    for stem, (w, h) in native.items():
        label = _read(out / f"{stem}.png")
        color, over = _read(out / f"{stem}_color.png"), _read(out / f"{stem}_overlay.png")
        conf = np.load(out / f"{stem}_conf.npy")
        assert label.shape == (h, w) and label.dtype == np.uint8 and label.max() < 19
        np.testing.assert_array_equal(color, colorize(label, 19))
        assert over.shape == (h, w, 3) and conf.shape == (h, w) and conf.dtype == np.float16
        assert 1 / 19 - 1e-3 <= conf.min() and conf.max() <= 1
    rgb = np.asarray(Image.open(tmp_path / "in" / "sub" / "alpha.png").convert("RGB"))
    np.testing.assert_array_equal(_read(out / "sub" / "alpha_overlay.png"),
                                  overlay_image(rgb, _read(out / "sub" / "alpha_color.png")))
    assert not (out / "broken.png").exists() and not (out / "notes.png").exists()


def test_resume_skips_existing_outputs_unless_forced(ckpt, tmp_path) -> None:
    _mixed(tmp_path / "in")
    out = tmp_path / "out"
    kwargs = {"size": "native", "device": "cpu", "progress": False, "overlay": True}
    first = predict_images(ckpt, [tmp_path / "in"], out, **kwargs)
    assert (first.written, first.skipped, len(first.unreadable)) == (6, 0, 2)
    (out / "grey_overlay.png").unlink()  # as if interrupted before this image was done
    before = (out / "rgb.png").stat().st_mtime_ns
    again = predict_images(ckpt, [tmp_path / "in"], out, **kwargs)
    assert (again.written, again.skipped) == (1, 5) and (out / "grey_overlay.png").is_file()
    assert (out / "rgb.png").stat().st_mtime_ns == before
    assert predict_images(ckpt, [tmp_path / "in"], out, force=True, **kwargs).written == 6
    with_probs = predict_images(ckpt, [tmp_path / "in"], out, probs=True, **kwargs)
    assert with_probs.written == 6  # a newly asked-for output redoes the images


def _labels(folder: Path) -> dict[str, np.ndarray]:
    """Label maps (``*.png`` except the colour/overlay ones) by file name, any depth."""
    return {p.name: _read(p) for p in folder.rglob("*.png") if not p.stem.endswith(("_color", "_overlay"))}


def test_same_label_maps_as_evaluate_library(toy, ckpt, tmp_path) -> None:
    evaluate_checkpoint(ckpt, root=toy, split="val", batch_size=1, device="cpu", progress=False,
                        save_dir=tmp_path / "eval")
    predict_images(ckpt, [toy / "leftImg8bit" / "val"], tmp_path / "pred", device="cpu", size=TOY_SIZE,
                   progress=False)
    ev, pred = _labels(tmp_path / "eval"), _labels(tmp_path / "pred")
    assert sorted(ev) == sorted(pred) and all(np.array_equal(pred[n], ev[n]) for n in ev)


@pytest.mark.parametrize("size", ["native", TOY_SIZE, "meta"])
def test_same_label_maps_as_evaluate_save_dir(toy, tmp_path, size) -> None:
    meta = {"target_size": list(TOY_SIZE)} if size == "meta" else None
    ckpt = save_checkpoint(tmp_path / "model.pt", _model(seed=1), meta=meta)
    from proda.cli import main as proda_main

    assert proda_main(["evaluate", "--checkpoint", str(ckpt), "--root", str(toy), "--split", "val",
                       "--save-dir", str(tmp_path / "eval"), "--device", "cpu"]) == 0
    summary = predict_images(ckpt, [toy / "leftImg8bit" / "val"], tmp_path / "pred", device="cpu",
                             size=None if size == "meta" else size, batch_size=4, progress=False)
    assert summary.written == 3
    ev, pred = _labels(tmp_path / "eval"), _labels(tmp_path / "pred")
    assert sorted(ev) == sorted(pred) and len(ev) == 3
    for name in ev:
        np.testing.assert_array_equal(pred[name], ev[name])
    assert (tmp_path / "pred" / "voxelstadt" / "voxelstadt_000000_000019_leftImg8bit_color.png").is_file()
    assert len({int(v) for arr in pred.values() for v in np.unique(arr)}) > 1


def _official_pkl(path: Path, model: DeepLabV2) -> Path:
    """A checkpoint as the official train.py writes it (DataParallel keys, numpy best_iou)."""
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"ResNet101": {"model_state": state, "objective_vectors": torch.zeros(19, 32)},
                "iter": 2000, "best_iou": np.nanmean(np.array([0.5, np.nan]))}, path)
    return path


def test_official_layout_checkpoint_with_bn_clr(tmp_path) -> None:
    model = _model(bn_clr=True, seed=2)
    pkl = _official_pkl(tmp_path / "from_scratch_r101.pkl", model)
    ours = save_checkpoint(tmp_path / "ours.pt", model)
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 80, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    for name, path in (("pkl", pkl), ("ours", ours)):
        predict_images(path, [tmp_path / "a.png"], tmp_path / name, size=(64, 32), device="cpu", progress=False)
    np.testing.assert_array_equal(_read(tmp_path / "pkl" / "a.png"), _read(tmp_path / "ours" / "a.png"))


def test_labelids_and_synthia_palette(tmp_path) -> None:
    ckpt = save_checkpoint(tmp_path / "synthia.pt", _model(n_class=16, seed=3))
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (30, 60, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    common = {"size": "native", "device": "cpu", "progress": False}
    predict_images(ckpt, [tmp_path / "a.jpg"], tmp_path / "train", **common)
    predict_images(ckpt, [tmp_path / "a.jpg"], tmp_path / "label", ids="labelids", **common)
    train = _read(tmp_path / "train" / "a.png")
    assert train.max() < 16
    np.testing.assert_array_equal(_read(tmp_path / "label" / "a.png"), np.array(CITYSCAPES_IDS[16])[train])
    color = _read(tmp_path / "train" / "a_color.png")
    np.testing.assert_array_equal(color, palette(16)[train])


def test_flip_tta_is_mirror_symmetric(ckpt, tmp_path) -> None:
    img = np.random.default_rng(3).integers(0, 256, (32, 64, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    Image.fromarray(img[:, ::-1].copy()).save(tmp_path / "b.png")
    predict_images(ckpt, [tmp_path / "a.png", tmp_path / "b.png"], tmp_path / "out", size="native", flip=True,
                   probs=True, device="cpu", progress=False)
    a, b = _read(tmp_path / "out" / "a.png"), _read(tmp_path / "out" / "b.png")
    assert (a == b[:, ::-1]).mean() > 0.999
    np.testing.assert_allclose(np.load(tmp_path / "out" / "a_conf.npy"),
                               np.load(tmp_path / "out" / "b_conf.npy")[:, ::-1], atol=1e-3)


def test_bf16_and_batches_of_mixed_sizes(ckpt, tmp_path) -> None:
    _mixed(tmp_path / "in")
    one = predict_images(ckpt, [tmp_path / "in"], tmp_path / "one", size="native", device="cpu",
                         progress=False)
    many = predict_images(ckpt, [tmp_path / "in"], tmp_path / "many", size="native", device="cpu",
                          batch_size=4, progress=False)
    assert one.written == many.written == 6
    for name, label in _labels(tmp_path / "one").items():
        assert (label == _labels(tmp_path / "many")[name]).mean() > 0.999
    bf16 = predict_images(ckpt, [tmp_path / "in" / "rgb.png"], tmp_path / "bf16", size="native",
                          precision="bf16", device="cpu", progress=False)
    assert bf16.written == 1 and _read(tmp_path / "bf16" / "rgb.png").shape == (23, 37)


def test_scale_policy() -> None:
    assert model_input_size((2048, 1024), None) == (2048, 1024)
    assert model_input_size((1024, 512), None) == (2048, 1024)  # Cityscapes-shaped: the eval size
    assert model_input_size((2040, 1025), None) == (2048, 1024)  # within 1% of its aspect ratio
    w, h = model_input_size((640, 480), None)  # another shape: aspect kept, the same pixel area
    assert abs(w / h - 4 / 3) < 0.01 and abs(w * h / (2048 * 1024) - 1) < 0.01
    assert model_input_size((640, 480), None, reference=(256, 128)) == (209, 157)
    assert model_input_size((640, 480), (96, 48)) == (96, 48)
    assert model_input_size((640, 480), "native") == (640, 480)


def test_inputs_globs_and_clashes(tmp_path) -> None:
    for name in ("a/x.png", "a/y.jpg", "b/z.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.new("RGB", (8, 4)).save(tmp_path / name)
    items = find_images([str(tmp_path / "*" / "*.png"), tmp_path / "a" / "x.png"])
    assert [str(i.rel) for i in items] == ["a/x", "b/z"]  # mirrored below the glob's folder; once
    assert [str(i.rel) for i in find_images([tmp_path], exclude=tmp_path / "a")] == ["b/z"]
    Image.new("RGB", (8, 4)).save(tmp_path / "a" / "x.jpg")
    with pytest.raises(PredictError, match="x.jpg and .*x.png|x.png and .*x.jpg"):
        find_images([tmp_path / "a"])
    assert output_paths("o", items[0], overlay=True)["overlay"] == Path("o/a/x_overlay.png")


def test_output_folder_inside_the_input_is_not_an_input(ckpt, tmp_path) -> None:
    Image.new("RGB", (16, 8)).save(tmp_path / "a.png")
    argv = ["--checkpoint", str(ckpt), str(tmp_path), "--out", str(tmp_path / "pred"), "--size", "native",
            "--device", "cpu", "--quiet"]
    assert main(argv) == 0 and _read(tmp_path / "pred" / "a.png").shape == (8, 16)
    again = predict_images(ckpt, [tmp_path], tmp_path / "pred", size="native", device="cpu", progress=False)
    assert (again.written, again.skipped) == (0, 1)
    (tmp_path / "solo").mkdir()
    Image.new("RGB", (16, 8)).save(tmp_path / "solo" / "a.png")
    with pytest.raises(PredictError, match="would overwrite the input image"):
        predict_images(ckpt, [tmp_path / "solo"], tmp_path / "solo", device="cpu", progress=False)


@pytest.mark.parametrize("case, message", [
    ("empty", "no images found"), ("missing", "input not found"),
    ("other_arch", "model.pth"), ("not_a_checkpoint", "notes.pt"), ("size", "size must be"),
])
def test_bad_input_is_one_line(ckpt, tmp_path, capsys, case, message) -> None:
    (tmp_path / "empty").mkdir()
    Image.new("RGB", (16, 8)).save(tmp_path / "a.png")
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 64)},
               tmp_path / "model.pth")  # a torchvision-like classifier
    (tmp_path / "notes.pt").write_text("hello")
    checkpoint = {"other_arch": tmp_path / "model.pth", "not_a_checkpoint": tmp_path / "notes.pt"}.get(case, ckpt)
    inputs = {"empty": tmp_path / "empty", "missing": tmp_path / "nope"}.get(case, tmp_path / "a.png")
    size = ["--size", "0", "4"] if case == "size" else []
    status = main(["--checkpoint", str(checkpoint), str(inputs), "--out", str(tmp_path / "o"),
                   "--device", "cpu", "--quiet", *size])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and err[0].startswith("proda predict: error: ")
    assert message in err[0]


def test_other_architecture_official_layout(tmp_path) -> None:
    state = {"backbone.conv1.weight": torch.zeros(8, 3, 3, 3), "classifier.weight": torch.zeros(19, 8, 1, 1)}
    torch.save({"ResNet101": {"model_state": state}}, tmp_path / "deeplabv3.pkl")
    Image.new("RGB", (16, 8)).save(tmp_path / "a.png")
    with pytest.raises(PredictError, match=r"deeplabv3\.pkl is not a ProDA DeepLabV2"):
        predict_images(tmp_path / "deeplabv3.pkl", [tmp_path / "a.png"], tmp_path / "o", progress=False)


def test_workflow_job_copies_report_overlays(ckpt, tmp_path) -> None:
    native = _mixed(tmp_path / "in")
    chosen = report_items(tmp_path / "in", 3)
    assert len(chosen) == 3 and not {i.source.name for i in chosen} & {"broken.png", "cut.jpg"}
    pngs = [tmp_path / "report" / report_name(i) for i in chosen]
    predict_job(checkpoint=ckpt, images=tmp_path / "in", out_dir=tmp_path / "pred", report_pngs=pngs,
                size=(48, 24), flip=False, batch_size=2, device="cpu", precision="fp32")
    for item, png in zip(chosen, pngs):
        np.testing.assert_array_equal(_read(png), _read(tmp_path / "pred" / f"{item.rel}_overlay.png"))
    assert len(list((tmp_path / "pred").rglob("*_overlay.png"))) == len(native)
    assert os.path.basename(pngs[0]).endswith("_overlay.png")


RULE_HARNESS = '''
from types import SimpleNamespace

from snakemake.exceptions import WorkflowError

CONFIG = {{"predict": {{"images": "imgs", "stage": "stage3", "flip": True, "overlays_in_report": 2}},
          "data": {{"target": {{"size": [48, 24]}}}}, "parity": False, "precision": "fp32",
          "device": "cpu", "eval": {{"batch_size": 2}}}}
config.update(CONFIG)
REPORTS = {{"exp": SimpleNamespace(models={{"stage3": "models/stage3"}})}}
STUDY = SimpleNamespace(folder="exp")


def threads_of(name):
    return 1


def resources_of(name):
    return {{}}


{functions}

include: "{rules}/predict.smk"


rule all:
    input:
        predict_targets(),
'''


def test_workflow_rule_predicts_the_folder(ckpt, tmp_path) -> None:
    """workflow/rules/predict.smk and its worker, with common.smk's names stubbed."""
    import shutil
    import subprocess
    import sys

    native = _mixed(tmp_path / "imgs")
    (tmp_path / "models" / "stage3").mkdir(parents=True)
    shutil.copyfile(ckpt, tmp_path / "models" / "stage3" / "model.pt")
    rules = Path(__file__).resolve().parents[1] / "workflow" / "rules"
    # the predict functions of common.smk (the rest of it needs a whole validated config)
    functions = (rules / "common.smk").read_text().split("# ---- the optional predict target")[1].split("\n", 1)[1]
    (tmp_path / "Snakefile").write_text(RULE_HARNESS.format(rules=rules, functions=functions))
    done = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--quiet"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "exp" / "predict" / "stage3"
    assert sorted(p.name for p in (tmp_path / "exp" / "report" / "predictions").iterdir()) == \
        ["grey_overlay.png", "rgb_overlay.png"]  # evenly spaced: broken.png (first) is passed over
    for stem, (w, h) in native.items():
        assert _read(out / f"{stem}_overlay.png").shape == (h, w, 3)
    assert "6 written" in (tmp_path / "exp" / "predict" / "stage3.log").read_text()
