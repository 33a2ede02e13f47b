"""The main job: the whole DAG on the default toy-city config (the README's `make demo`), and what
its report holds.

The stage ordering asserted is the one the toy study supports across seeds and the two CPU kinds
measured (docs/toy-benchmark.md, "The study"). Stages 1 and 2 end clearly above the warm-up:
stage 1 gains +6.8 ± 0.2 mIoU over 3 single-threaded seeds (smallest +6.6), stage 2 at least +7.6;
this 2-thread run gained +4.6 and +5.2 on the README's machine kind (2026-11-30, 2026-12-04) and
+3.5 and +3.3 on the machine of 2026-12-03 (another AMD EPYC; the same code, bit for bit the same
warm-up, other kernels later). The test asks for +2, so it is no one-seed or one-machine accident. Stage 3 gained
+5.5 and +1.3 on those two machines: it is only held above the warm-up. Stage 2 against stage 1
(+1.8 ± 1.1) and stage 3 against stage 2 (−0.9 ± 0.7) are within two standard deviations of a tie
across seeds, so each is only held to its study mean minus three standard deviations: stage 2 ≥
stage 1 − 1.5, stage 3 ≥ stage 2 − 3.0 (the seeds' worst: +0.94 and −1.46; the two machines:
+0.56 / −0.24 and +0.37 / −1.94). A later stage that falls apart, as stage 3 with 19 times the
distillation weight did on seed 1337 (−3.5), fails it.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
STAGES = ["warmup", "stage1", "stage2", "stage3"]


@pytest.mark.slow
def test_default_toy_run_writes_its_whole_report_and_keeps_the_stage_ordering(tmp_path):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--cores", "2"]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=2400)
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout + run.stderr
    assert "Report: results/toycity/" in out and "Run results/toycity:" in out

    res = tmp_path / "results" / "toycity"
    summary = pd.read_csv(res / "report" / "summary.csv", index_col=0)
    assert list(summary.index) == STAGES
    assert summary.columns[-1] == "mIoU" and len(summary.columns) == 20  # 19 classes + mIoU
    assert summary["mIoU"].between(0, 100).all()
    gains = summary["mIoU"] - summary.loc["warmup", "mIoU"]
    assert (gains[["stage1", "stage2"]] > 2).all() and gains["stage3"] > 0, summary["mIoU"]
    margins = summary["mIoU"].diff()
    assert margins["stage2"] >= -1.5 and margins["stage3"] >= -3.0, summary["mIoU"]
    for stage in STAGES:
        per_stage = pd.read_csv(res / "eval" / f"{stage}.csv")
        assert list(per_stage.columns) == ["class", "iou"]
        assert per_stage.loc[per_stage["class"] == "mIoU", "iou"].item() == pytest.approx(summary.loc[stage, "mIoU"])
    quality = pd.read_csv(res / "label_quality.csv")
    assert len(quality) == 5 and quality[["miou", "pixel_acc", "kept_fraction"]].stack().dropna().between(0, 100).all()
    for name in ("miou_by_stage.png", "per_class_iou.png", "prediction_grid.png", "training_curves.png",
                 "label_quality.png"):
        with Image.open(res / "report" / name) as im:
            assert im.size[0] > 100 and im.size[1] > 100, name
