"""benchmarks/gpu_check.sh on a CPU at tiny shapes: every stage in every precision steps, and the
Markdown table benchmarks/README.md takes is printed (the CUDA run is the same code at the paper's
shapes)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
STAGES = ("warmup", "stage1", "stage2")
PRECISIONS = ("fp32", "bf16", "bf16+channels_last")


def gpu_check(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_TIMEOUT=str(timeout - 10))
    return subprocess.run(["bash", str(SCRIPT), *args], check=False, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env)


def table_rows(stdout: str) -> dict[tuple[str, str], list[str]]:
    """(check, precision) -> the remaining cells of each row of the final Markdown table."""
    lines = stdout.splitlines()
    start = lines.index("| check | precision | s / iteration | images / s | peak memory (MiB) | result |")
    assert lines[start + 1] == "| --- | --- | --- | --- | --- | --- |"
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == 6, line
        rows[(cells[0], cells[1])] = cells[2:]
    return rows


def test_tiny_cpu_check_steps_every_stage_in_every_precision_and_prints_the_table():
    # one thread: on a shared, busy CPU two threads stall on each other for seconds
    run = gpu_check("--device", "cpu", "--tiny", "--skip-workflow", "--threads", "1")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    assert "part 1 (workflow): skipped (--skip-workflow)" in out
    header = next(line for line in out.splitlines() if line.startswith("GPU check (tiny shapes, device cpu): "))
    assert f"torch {torch.__version__}" in header
    assert re.search(r"; \d{4}-\d\d-\d\d \d\d:\d\d UTC; commit \S+", header), header
    assert "peak memory: " in header

    rows = table_rows(out)
    for stage in STAGES:
        for precision in PRECISIONS:
            sec, ips, peak, result = rows[(stage, precision)]
            assert result == "pass", (stage, precision, result)
            assert float(sec) > 0 and float(ips) > 0, (stage, precision, sec, ips)
            assert float(peak.replace(",", "")) > 0, (stage, precision, peak)
    if torch.cuda.device_count() < 2:
        assert rows[("DDP (2 processes)", "")][-1].startswith("skipped")
    assert "all passed" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_fails_with_one_line():
    run = gpu_check("--skip-workflow", timeout=60)
    assert run.returncode == 1
    assert "--device cuda but torch sees no CUDA device" in run.stdout


def test_tiny_cpu_scale_table_prints_memory_pys_table_with_the_gpu_column_filled():
    run = gpu_check("--device", "cpu", "--tiny", "--skip-workflow", "--skip-stages", "--skip-ddp", "--scale-table",
                    "--threads", "1", "--steps", "1", "--warmup-steps", "1", timeout=240)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    assert "part 2 (stage steps): skipped (--skip-stages)" in out
    assert table_rows(out)[("scale table (part 4)", "fp32, bf16")][-1] == "pass"
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| stage / pass | fp32 GiB | bf16 GiB |"))
    rows = [line for line in lines[start + 2:] if line.startswith("|")]
    labels = [line.split("|")[1].strip() for line in rows]
    assert any(label.startswith("stage-1 step, model checkpointing=True") for label in labels)
    assert len(rows) == 8
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert float(cells[1]) >= 0 and float(cells[2]) >= 0
        assert cells[-1].endswith(" d") and float(cells[-1].split(" s,")[0]) > 0, line
