"""Per-iteration wall time and peak memory of each training stage at the toy settings.

    .venv/bin/python benchmarks/stage_speed.py [--config config.yaml] [--iters 20] [--threads 2]

Prepares tiny upstream artifacts (2-iteration models, pseudo labels, prototypes) under
``results/benchmarks/``, then times ``--iters`` steps of each stage in a fresh process (after 3
untimed warm-up steps) and reports seconds per iteration, images per second and the peak resident
memory of that process (CPU) or the peak allocated GPU memory (CUDA). Writes
``results/benchmarks/stage_speed.csv`` and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from proda import steps
from proda.config import deep_merge, resolve

REPO = Path(__file__).resolve().parents[1]
STAGES = ("warmup", "stage1", "stage2", "stage3")


def _prepare(cfg: dict, work: Path) -> dict:
    """Upstream artifacts every stage needs (quick 2-iteration models)."""
    quick = deep_merge(cfg, {s: {"iterations": 2} for s in STAGES})
    paths = {k: work / f"{k}.pt" for k in STAGES}
    steps.warmup(quick, paths["warmup"], work / "state/warmup")
    steps.soft_labels(quick, paths["warmup"], work / "soft.h5")
    steps.prototypes(quick, paths["warmup"], work / "protos.h5")
    steps.stage1(quick, paths["warmup"], work / "soft.h5", work / "protos.h5", paths["stage1"], work / "state/s1")
    steps.hard_labels(quick, paths["stage1"], work / "hard1.h5")
    steps.distill(quick, "stage2", paths["stage1"], work / "hard1.h5", paths["stage2"], work / "state/s2",
                  paths["warmup"])
    steps.hard_labels(quick, paths["stage2"], work / "hard2.h5")
    return {k: str(v) for k, v in paths.items()}


def _build(stage: str, cfg: dict, work: Path, ckpts: dict) -> steps.Job:
    if stage == "warmup":
        return steps.build_warmup(cfg)
    if stage == "stage1":
        return steps.build_stage1(cfg, ckpts["warmup"], work / "soft.h5", work / "protos.h5")
    teacher, labels = (ckpts["stage1"], "hard1.h5") if stage == "stage2" else (ckpts["stage2"], "hard2.h5")
    return steps.build_distill(cfg, stage, teacher, work / labels, ckpts["warmup"])


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(stage: str, cfg: dict, work: Path, ckpts: dict, iters: int) -> dict:
    """Time ``iters`` steps of ``stage`` (after 3 untimed ones) in this process."""
    job = _build(stage, cfg, work, ckpts)
    source, target = job.streams(cfg)
    cuda = job.runtime.device.type == "cuda"
    for i in range(3):
        job.stage.step(next(source), next(target), i + 1)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for i in range(iters):
        job.stage.step(next(source), next(target), i + 4)
    if cuda:
        torch.cuda.synchronize()
    sec = (time.perf_counter() - start) / iters
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _peak_rss_mb()
    return {"stage": stage, "device": str(job.runtime.device), "sec_per_iter": round(sec, 4),
            "images_per_s": round(cfg["data"]["batch_size"] / sec, 2),
            "peak_memory_mb": round(peak, 1), "memory_kind": "cuda allocated" if cuda else "process RSS"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "config.yaml"))
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default=None)
    parser.add_argument("--work", default=str(REPO / "results/benchmarks"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    cfg = resolve(args.config)
    cfg["data"]["num_workers"] = 0
    if args.device:
        cfg["device"] = args.device
    if cfg["data"]["toycity"]:
        paths = steps.toycity(cfg, work / "toycity")
        cfg["data"]["source"]["root"], cfg["data"]["target"]["root"] = str(paths["source"]), str(paths["target"])
    if args.child:
        print(json.dumps(measure(args.child, cfg, work, json.loads((work / "ckpts.json").read_text()), args.iters)))
        return
    work.mkdir(parents=True, exist_ok=True)
    (work / "ckpts.json").write_text(json.dumps(_prepare(cfg, work)))
    rows = []
    for stage in STAGES:  # one process per stage, so each peak memory is its own
        cmd = [sys.executable, __file__, "--config", args.config, "--iters", str(args.iters),
               "--threads", str(args.threads), "--work", str(work), "--child", stage]
        if args.device:
            cmd += ["--device", args.device]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    with open(work / "stage_speed.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print("| stage | device | s / iteration | images / s | peak memory (MB) |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['stage']} | {r['device']} | {r['sec_per_iter']} | {r['images_per_s']} | "
              f"{r['peak_memory_mb']} ({r['memory_kind']}) |")


if __name__ == "__main__":
    main()
