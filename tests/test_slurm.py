"""The tiny toy workflow through `snakemake --profile slurm` on a running SLURM cluster.

Needs SLURM up (CI: .ci/run starts a single-node cluster with .ci/slurm-up.sh and runs
`pytest -m slurm`); the default test run excludes this module with `-m "not slurm"`. The
command line overrides are the CI ones of docs: the node has no accounting database
(squeue for status), one partition `debug`, and a fake GPU."""
from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
SLURM_JOBS = sorted(["toycity", "check_data", "warmup", "soft_labels", "prototypes", "stage1", "hard_labels",
                     "hard_labels", "distill", "distill", *["evaluate"] * 4, "figures", "label_quality"])
LOCAL = ("manifest", "report", "all")


def _slurm_is_up() -> None:
    hint = "SLURM is not running: start it with `bash .ci/slurm-up.sh` (root) before `pytest -m slurm`"
    assert shutil.which("sinfo") and shutil.which("sbatch"), hint
    states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30).stdout
    assert re.search(r"idle|mix|alloc", states), f"{hint} (sinfo: {states.strip() or 'no nodes'})"


def test_tiny_workflow_runs_through_the_slurm_profile(tmp_path):
    _slurm_is_up()
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--cores", "all",
           "--profile", "slurm", "--directory", str(tmp_path),
           "--configfile", str(REPO / "config.yaml"), str(REPO / "config" / "tiny.yaml"),
           "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
           "--default-resources", "slurm_partition=debug", "mem_mb=1000", "runtime=10"]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=1500)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-8000:]
    submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid \d+ \(log: .*rule_(\w+)/", out)
    assert sorted(submitted) == SLURM_JOBS, out[-8000:]  # every rule but the local ones
    for local in LOCAL:
        assert re.search(rf"^localrule {local}:", out, re.M), local
    with open(tmp_path / "results" / "tiny" / "report" / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [row["stage"] for row in rows] == ["warmup", "stage1", "stage2", "stage3"]
    assert all(0.0 <= float(row["mIoU"]) <= 100.0 for row in rows)
    for plot in ("miou_by_stage.png", "per_class_iou.png"):
        assert (tmp_path / "results" / "tiny" / "report" / plot).stat().st_size > 0
