"""proda.report: summary table and plots from hand-made evaluation CSVs."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from proda.cli import main
from proda.report import read_eval_csv, summary_table, write_report

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
