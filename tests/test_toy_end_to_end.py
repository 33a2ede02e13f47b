"""The main job: the whole DAG on the default toy-city config, and what its report says.

This is the README's `make demo` (about 11 minutes on 2 CPU cores): every stage must end above the
warm-up on the target, which is the acceptance check of the toy benchmark.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
STAGES = ["warmup", "stage1", "stage2", "stage3"]


@pytest.mark.slow
def test_default_toy_run_improves_every_stage_over_the_warmup(tmp_path):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(REPO / "config.yaml"), "--cores", "2"]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Report: results/toycity/report/summary.csv" in run.stdout + run.stderr

    summary = pd.read_csv(tmp_path / "results/toycity/report/summary.csv", index_col=0)
    assert list(summary.index) == STAGES
    assert summary.columns[-1] == "mIoU" and len(summary.columns) == 20  # 19 classes + mIoU
    assert summary["mIoU"].between(0, 100).all()
    warmup = summary.loc["warmup", "mIoU"]
    for stage in STAGES[1:]:
        assert summary.loc[stage, "mIoU"] > warmup, summary["mIoU"].to_dict()
    for stage in STAGES:
        per_stage = pd.read_csv(tmp_path / f"results/toycity/eval/{stage}.csv")
        assert list(per_stage.columns) == ["class", "iou"]
        assert per_stage.loc[per_stage["class"] == "mIoU", "iou"].item() == pytest.approx(
            summary.loc[stage, "mIoU"])
