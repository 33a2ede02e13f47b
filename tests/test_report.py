"""proda.report: summary table and plots from hand-made evaluation CSVs."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from proda.cli import main
from proda.report import (CAPTIONS, ablation_table, bounds_table, format_seed_summary, gap_closed,
                          plot_prediction_grid, plot_seed_summary, plot_training_curves,
                          read_eval_csv, read_seed_summary, seed_table, summary_table,
                          write_ablations, write_bounds, write_report, write_seed_summary)

NAMES16 = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
           "traffic sign", "vegetation", "sky", "person", "rider", "car", "bus", "motorcycle",
           "bicycle"]


def _write(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("class,iou\n" + "".join(f"{k},{v}\n" for k, v in rows))
    return path


@pytest.fixture()
def csvs(tmp_path) -> dict[str, Path]:
    tail = [("pixel_acc", "90.0"), ("mean_acc", "70.0"), ("fwIoU", "80.0")]
    return {
        "stage2": _write(tmp_path / "s2.csv", [("road", "60.5"), ("sidewalk", "20.0"),
                                               ("mIoU", "40.25")] + tail),
        "warmup": _write(tmp_path / "w.csv", [("road", "50.0"), ("sidewalk", ""),
                                              ("mIoU", "50.0")] + tail),
    }


def test_read_eval_csv(csvs) -> None:
    values = read_eval_csv(csvs["warmup"])
    assert list(values) == ["road", "sidewalk", "mIoU", "pixel_acc", "mean_acc", "fwIoU"]
    assert values["road"] == 50.0 and math.isnan(values["sidewalk"])


def test_read_eval_csv_errors_name_the_file(tmp_path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("name,value\nroad,1\n")
    with pytest.raises(ValueError, match="bad.csv"):
        read_eval_csv(bad)
    _write(bad, [("road", "x"), ("mIoU", "1")])
    with pytest.raises(ValueError, match="bad.csv line 2"):
        read_eval_csv(bad)


def test_summary_table_keeps_stage_order_and_nan(csvs) -> None:
    table = summary_table(csvs)
    assert list(table.index) == ["stage2", "warmup"]
    assert list(table.columns) == ["road", "sidewalk", "mIoU"]
    assert table.loc["stage2"].tolist() == [60.5, 20.0, 40.25]
    assert table.loc["warmup", "road"] == 50.0 and math.isnan(table.loc["warmup", "sidewalk"])


def test_sixteen_class_summary_has_miou13(tmp_path) -> None:
    iou = np.linspace(10, 85, 16)
    kept = [c for c in range(16) if c not in (3, 4, 5)]
    rows = [(n, repr(float(v))) for n, v in zip(NAMES16, iou)]
    rows += [("mIoU", repr(float(iou.mean()))), ("mIoU-16", repr(float(iou.mean()))),
             ("mIoU-13", repr(float(iou[kept].mean()))), ("pixel_acc", "1"), ("mean_acc", "1"),
             ("fwIoU", "1")]
    table = summary_table({"stage1": _write(tmp_path / "s1.csv", rows)})
    assert list(table.columns) == NAMES16 + ["mIoU", "mIoU-16", "mIoU-13"]
    assert table.loc["stage1", "mIoU-13"] == pytest.approx(iou[kept].mean(), abs=1e-12)
    paths = write_report({"stage1": tmp_path / "s1.csv"}, tmp_path / "report")
    assert "mIoU-13" in pd.read_csv(paths["summary"], index_col="stage").columns


def test_write_report_files(csvs, tmp_path) -> None:
    out = tmp_path / "report"
    paths = write_report(csvs, out)
    assert sorted(p.name for p in out.iterdir()) == ["miou_by_stage.png", "per_class_iou.png",
                                                     "summary.csv"]
    back = pd.read_csv(paths["summary"], index_col="stage")
    pd.testing.assert_frame_equal(back, summary_table(csvs))
    for name in ("miou_by_stage.png", "per_class_iou.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
            im.verify()


def test_cli(csvs, tmp_path, capsys) -> None:
    out = tmp_path / "cli"
    assert main(["report", "--out-dir", str(out)] + [f"{k}={v}" for k, v in csvs.items()]) == 0
    assert (out / "summary.csv").is_file()
    assert "stage2" in (out / "summary.csv").read_text()
    assert main(["report", "--out-dir", str(out), "no-equals-sign"]) == 2
    assert "expected STAGE=CSV" in capsys.readouterr().err


def test_format_summary_lists_each_stage_with_its_change(tmp_path):
    from proda.report import format_summary

    path = tmp_path / "summary.csv"
    path.write_text("stage,road,mIoU\nwarmup,50.0,20.0\nstage1,55.0,22.5\n")
    lines = format_summary(path).splitlines()
    assert lines[0].split()[:2] == ["stage", "mIoU"]
    assert lines[1].split() == ["warmup", "20.00", "+0.00"]
    assert lines[2].split() == ["stage1", "22.50", "+2.50"]


# ----------------------------------------------------------------------------- seeds, bounds, ablations


def _table(rows: dict[str, dict[str, float]]) -> pd.DataFrame:
    table = pd.DataFrame.from_dict(rows, orient="index").astype(float)
    table.index.name = "stage"
    return table


@pytest.fixture()
def seeds() -> dict[int, pd.DataFrame]:
    return {1: _table({"warmup": {"road": 60.0, "mIoU": 24.0}}),
            0: _table({"warmup": {"road": 50.0, "mIoU": 20.0}, "stage1": {"road": 70.0, "mIoU": 30.0}})}


def _png_ok(path: Path) -> None:
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
        im.verify()


def test_seed_table_mean_std_and_per_seed(seeds) -> None:
    table = seed_table(seeds)
    assert list(table.index) == ["warmup", "stage1"]
    assert table.loc["warmup", ("mIoU", "mean")] == 22.0
    assert table.loc["warmup", ("mIoU", "std")] == pytest.approx(2.8284271, abs=1e-6)
    assert table.loc["warmup", ("road", "std")] == pytest.approx(7.0710678, abs=1e-6)
    assert table.loc["warmup", ("mIoU", "seed0")] == 20.0 and table.loc["warmup", ("mIoU", "seed1")] == 24.0
    # stage 1 only in seed 0: its mean is that value, its std undefined
    assert table.loc["stage1", ("mIoU", "mean")] == 30.0 and table.loc["stage1", ("n_seeds", "")] == 1
    assert math.isnan(table.loc["stage1", ("mIoU", "std")])
    assert math.isnan(table.loc["stage1", ("mIoU", "seed1")])
    single = seed_table({3: seeds[0]})
    assert math.isnan(single.loc["warmup", ("mIoU", "std")])
    with pytest.raises(ValueError):
        seed_table({})


def test_seed_summary_csv_and_console(seeds, tmp_path) -> None:
    path = write_seed_summary(seeds, tmp_path / "seed_summary.csv")
    back = read_seed_summary(path)
    assert list(back.columns) == ["n_seeds", "mIoU_mean", "mIoU_std", "mIoU_seed0", "mIoU_seed1",
                                  "road_mean", "road_std"]
    assert back.loc["warmup", "mIoU_mean"] == 22.0
    text = format_seed_summary(path)
    lines = text.splitlines()
    assert "mIoU mean ± std" in lines[0]
    assert "22.00 ±  2.83" in lines[1] and "seed 0: 20.00, seed 1: 24.00" in lines[1]
    assert lines[2].startswith("stage1") and "30.00 ±   n/a" in lines[2] and "seed 1" not in lines[2]
    _png_ok(plot_seed_summary(path, tmp_path / "seed_summary.png"))


def test_gap_closed() -> None:
    assert gap_closed(30, 20, 40) == 50.0
    assert gap_closed(15, 20, 40) == -25.0
    assert math.isnan(gap_closed(30, 40, 40)) and math.isnan(gap_closed(30, 40, 20))
    assert math.isnan(gap_closed(float("nan"), 20, 40))


def test_bounds_table_per_seed_then_aggregated(seeds, tmp_path) -> None:
    summary = write_seed_summary(seeds, tmp_path / "seed_summary.csv")
    table = bounds_table(summary, source_only={0: 10.0, 1: 14.0}, oracle={0: 30.0, 1: 34.0})
    assert list(table.columns) == ["n_seeds", "mIoU_mean", "mIoU_std", "source_only_mean", "gain_mean",
                                   "gain_std", "oracle_mean", "gap_closed_mean", "gap_closed_std"]
    warm = table.loc["warmup"]
    assert warm["source_only_mean"] == 12.0 and warm["oracle_mean"] == 32.0
    assert warm["gain_mean"] == 10.0 and warm["gain_std"] == 0.0
    assert warm["gap_closed_mean"] == 50.0 and warm["gap_closed_std"] == 0.0
    assert table.loc["stage1", "gap_closed_mean"] == 100.0 and math.isnan(table.loc["stage1", "gap_closed_std"])
    # same from the in-memory table; a single number serves every seed; no oracle: no gap columns
    same = bounds_table(seed_table(seeds), source_only={0: 10.0, 1: 14.0}, oracle={0: 30.0, 1: 34.0})
    pd.testing.assert_frame_equal(same, table)
    plain = bounds_table(summary, source_only=20.0)
    assert list(plain.columns) == ["n_seeds", "mIoU_mean", "mIoU_std", "source_only_mean",
                                   "gain_mean", "gain_std"]
    assert plain.loc["warmup", "gain_mean"] == 2.0
    with pytest.raises(ValueError, match=r"seed\(s\) \[1\]"):
        bounds_table(summary, source_only={0: 10.0})
    path = write_bounds(summary, {0: 10.0, 1: 14.0}, None, tmp_path / "bounds.csv")
    assert pd.read_csv(path, index_col="stage").loc["stage1", "gain_mean"] == 20.0


def test_ablation_table(tmp_path) -> None:
    full = {"stage1": [50.0, 52.0], "stage2": [55.0]}
    ablations = {"stage 1 without rectification": ("stage1", [45.0, 47.0]),
                 "stage 2 without distillation": ("stage2", [53.0]),
                 "stage 1 without consistency": ("stage1", [49.0, 50.0])}
    table = ablation_table(full, ablations)
    assert table["name"].tolist() == ["full method", "stage 1 without rectification",
                                      "stage 1 without consistency", "full method",
                                      "stage 2 without distillation"]
    assert table["stage"].tolist() == ["stage1", "stage1", "stage1", "stage2", "stage2"]
    assert table["mIoU_mean"].tolist() == [51.0, 46.0, 49.5, 55.0, 53.0]
    assert table["mIoU_std"].iloc[0] == pytest.approx(math.sqrt(2))
    assert table["delta_vs_full"].tolist() == [0.0, -5.0, -1.5, 0.0, -2.0]
    assert table["per_seed"].iloc[1] == "45;47"
    path = write_ablations(full, ablations, tmp_path / "ablations.csv")
    back = pd.read_csv(path)
    assert list(back.columns) == ["name", "stage", "n_seeds", "mIoU_mean", "mIoU_std",
                                  "delta_vs_full", "per_seed"]
    with pytest.raises(ValueError, match="stage3"):
        ablation_table(full, {"x": ("stage3", [1.0])})


# ----------------------------------------------------------------------------- figures
def test_training_curves(tmp_path) -> None:
    warm = tmp_path / "warmup.csv"
    warm.write_text("iteration\n")  # an imported warm-up
    its = np.arange(1, 121)
    stage1 = tmp_path / "stage1.csv"
    pd.DataFrame({"iteration": its, "loss_src": 1 / its, "loss": 2 / its, "loss_tgt": 0.5 + 0 * its,
                  "loss_con": np.sin(its), "lr": 1e-4 * (1 - its / 121) ** 0.9,
                  "images_per_s": 3.0}).to_csv(stage1, index=False)
    _png_ok(plot_training_curves({"warmup": warm, "stage1": stage1}, tmp_path / "training_curves.png"))


def test_prediction_grid(tmp_path) -> None:
    import torch

    from proda.data import CityscapesDataset
    from proda.data.toycity import generate
    from proda.models import DeepLabV2

    torch.set_num_threads(1)
    generate(tmp_path / "bench", n_source=2, n_target_train=2, n_target_val=3, source_size=(64, 32),
             target_size=(64, 32))
    val = CityscapesDataset(tmp_path / "bench" / "cityscapes", split="val", size=None)
    torch.manual_seed(0)
    models = {stage: DeepLabV2(19, backbone="resnet18", base_width=8, head_channels=32)
              for stage in ("warmup", "stage1")}
    for model in models.values():
        model.train()
    path = plot_prediction_grid(val, models, 2, tmp_path / "prediction_grid.png", 19)
    _png_ok(path)
    assert all(model.training for model in models.values())  # predict restores the mode


def test_captions_cover_every_figure_and_table() -> None:
    names = ["prediction_grid.png", "training_curves.png", "label_quality.png", "seed_summary.png",
             "ablations.csv", "bounds.csv", "seed_summary.csv", "label_quality.csv", "summary.csv",
             "miou_by_stage.png", "per_class_iou.png"]
    for name in names:
        assert len(CAPTIONS.get(name, "")) > 20, name


# ----------------------------------------------------------------------------- damaged files
def _damage(path: Path, seed: int, n: int = 64) -> None:
    """``n`` random bytes written into the middle of ``path``."""
    data = bytearray(path.read_bytes())
    mid = max(0, len(data) // 2 - n // 2)
    data[mid:mid + n] = np.random.default_rng(seed).bytes(n)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("seed", range(8))
def test_random_bytes_in_an_evaluation_csv_fail_in_one_line_naming_the_file(csvs, seed) -> None:
    path = csvs["stage2"]
    _damage(path, seed)
    with pytest.raises(ValueError) as err:
        read_eval_csv(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_evaluation_csv_damage_is_a_damaged_artifact_error(tmp_path) -> None:
    from proda.integrity import DamagedArtifactError

    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"class,iou\nroad,\xff\xfe\x00\x9c\n")
    with pytest.raises(DamagedArtifactError, match=r"evaluation CSV .*binary\.csv is damaged \(not CSV text"):
        read_eval_csv(binary)
    outside = _write(tmp_path / "outside.csv", [("road", "1e+38"), ("mIoU", "50")])
    with pytest.raises(DamagedArtifactError, match=r"outside\.csv is damaged \(line 2: 1e\+38 is not a percentage"):
        read_eval_csv(outside)


@pytest.mark.parametrize("seed", range(4))
def test_random_bytes_in_summary_tables_fail_in_one_line_naming_the_file(seeds, tmp_path, seed) -> None:
    from proda.report import format_summary, read_summary

    summary = tmp_path / "summary.csv"
    summary_table({"warmup": _write(tmp_path / "w.csv", [("road", "50"), ("mIoU", "50")])}).to_csv(summary)
    assert read_summary(summary).loc["warmup", "mIoU"] == 50.0
    seed_csv = write_seed_summary(seeds, tmp_path / "seed_summary.csv")
    for path, read in ((summary, format_summary), (seed_csv, read_seed_summary), (seed_csv, format_seed_summary)):
        _damage(path, seed, n=16)
        with pytest.raises(ValueError) as err:
            read(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
