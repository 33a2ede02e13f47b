"""Rerun the toy-benchmark variants of docs/toy-benchmark.md ("Diagnosis of the toy benchmark").

Each variant is the study's toy config (``config.yaml``, the seeds of ``config/study.yaml``) with
one overlay. Snakemake builds only the chain's evaluations up to the stage in question, for every
seed, sharing every upstream folder with the study (so after ``make study`` only the changed stage
and what follows it run; the wider-network and relit-source variants train their own warm-up),
and the script prints one Markdown row per variant: the paired margin (stage 1 − warm-up,
stage 2 − stage 1 or stage 3 − stage 2) per seed, then its mean ± std::

    python benchmarks/toy_variants.py stage1            # the stage-1 table (11 variants)
    python benchmarks/toy_variants.py stage2 --dry-run  # list the jobs only
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from proda.config import read_yaml, resolve
from proda.plan import study
from proda.report import read_eval_csv

FAST = {"ema_momentum": 0.97, "proto_momentum": 0.02}  # teacher/prototype momenta scaled to 250 iterations
T1 = {"proto_temperature": 1.0}  # the official temperature: the toy's setting before stage 1's retuning
RELIT_LABEL = "source images relit (data.toycity.source_lighting 0.7; its own data and warm-up)"
RELIT = {"data": {"toycity": {"source_lighting": 0.7}}}
MILD_LABEL = "source images relit less (data.toycity.source_lighting 0.4; its own data and warm-up)"
MILD = {"data": {"toycity": {"source_lighting": 0.4}}}
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "stage1": {
        "kept: prototype temperature 3, official momenta, lr 0.004, 250 iterations": {},
        "temperature 10": {"stage1": {"proto_temperature": 10.0}},
        "temperature 1 (official)": {"stage1": T1},
        "temperature 1, lr 0.008": {"stage1": {**T1, "lr": 0.008}},
        "temperature 1, 400 iterations": {"stage1": {**T1, "iterations": 400}},
        "temperature 1, momenta 0.97 / 0.02, lr 0.004": {"stage1": {**T1, **FAST}},
        "temperature 1, momenta 0.97 / 0.02, lr 0.008": {"stage1": {**T1, **FAST, "lr": 0.008}},
        "temperature 1, momenta 0.97 / 0.02, lr 0.015": {"stage1": {**T1, **FAST, "lr": 0.015}},
        "temperature 1, a 1.5x wider toy network (model.base_width 24; its own warm-up)":
            {"stage1": T1, "model": {"base_width": 24}},
        RELIT_LABEL: RELIT,
        MILD_LABEL: MILD,
    },
    # The rows that set stage1: T1 were measured on the stage 1 of that time (temperature 1): each
    # carries that setting, so its rows map to the runs they came from.
    "stage2": {
        "kept: warm-up backbone student, lr 0.004, 800 iterations, threshold 0.8": {},
        "the same, after a temperature-1 stage 1": {"stage1": T1},
        "600 iterations": {"stage2": {"iterations": 600}},
        "1200 iterations": {"stage2": {"iterations": 1200}},
        "200 iterations, after the kept stage 1": {"stage2": {"iterations": 200}},
        "400 iterations": {"stage1": T1, "stage2": {"iterations": 400}},
        "200 iterations": {"stage1": T1, "stage2": {"iterations": 200}},
        "200 iterations, lr 0.02": {"stage1": T1, "stage2": {"iterations": 200, "lr": 0.02}},
        "400 iterations, lr 0.01": {"stage1": T1, "stage2": {"iterations": 400, "lr": 0.01}},
        "200 iterations, student_init: resume":
            {"stage1": T1, "stage2": {"iterations": 200, "student_init": "resume"}, "stage3": {"ema_bn": False}},
        "200 iterations, threshold 0.6 (stages 2 and 3)":
            {"stage1": T1, "stage2": {"iterations": 200, "threshold": 0.6}, "stage3": {"threshold": 0.6}},
        "200 iterations, threshold 0.9": {"stage1": T1, "stage2": {"iterations": 200, "threshold": 0.9}},
        "200 iterations, no bn_pretrain (bn_clr: false)":
            {"stage1": T1, "stage2": {"iterations": 200, "bn_clr": False}},
        "200 iterations, student on the weak view (S_pseudo: 0)":
            {"stage1": T1, "stage2": {"iterations": 200, "S_pseudo": 0}},
        "distillation weight 19 in stages 2 and 3 (about a per-pixel KL)":
            {"stage2": {"distillation": 19.0}, "stage3": {"distillation": 19.0}},
        RELIT_LABEL: RELIT,
        MILD_LABEL: MILD,
    },
    "stage3": {
        "kept: resumed from stage 2, lr 0.002, 200 iterations, threshold 0.8": {},
        "lr 0.001": {"stage3": {"lr": 0.001}},
        "lr 0.0002": {"stage3": {"lr": 0.0002}},
        "100 iterations": {"stage3": {"iterations": 100}},
        "400 iterations": {"stage3": {"iterations": 400}},
        "threshold 0.9": {"stage3": {"threshold": 0.9}},
        "a new student like stage 2's (warm-up backbone, lr 0.004, 800 iterations)":
            {"stage3": {"student_init": "warmup_backbone", "iterations": 800, "lr": 0.004}},
        "distillation weight 19 (about a per-pixel KL)": {"stage3": {"distillation": 19.0}},
        "after a 600-iteration stage 2": {"stage2": {"iterations": 600}},
        "after a 1200-iteration stage 2": {"stage2": {"iterations": 1200}},
        RELIT_LABEL: RELIT,
        MILD_LABEL: MILD,
    },
}
PREVIOUS = {"stage1": "warmup", "stage2": "stage1", "stage3": "stage2"}


def overlay(stage: str, index: int, change: dict[str, Any]) -> dict[str, Any]:
    """The variant's config file contents: the study's seeds, its own experiment name, the change."""
    seeds = read_yaml(REPO / "config" / "study.yaml")["study"]["seeds"]
    return {"experiment": f"variant-{stage}-{index}", "study": {"seeds": seeds}, **change}


def evaluations(cfg: dict[str, Any], stage: str) -> dict[int, dict[str, str]]:
    """seed -> {stage: evaluation CSV} of the stage and the one before it."""
    runs = study(cfg)
    return {seed: {s: runs.plans[name].evals[s] for s in (PREVIOUS[stage], stage)}
            for seed, name in runs.main.items()}


def row(label: str, evals: dict[int, dict[str, str]], stage: str) -> str:
    margins = [read_eval_csv(e[stage])["mIoU"] - read_eval_csv(e[PREVIOUS[stage]])["mIoU"] for e in evals.values()]
    per_seed = ", ".join(f"{m:+.2f}" for m in margins)
    return f"| {label} | {per_seed} | {statistics.mean(margins):+.1f} ± {statistics.stdev(margins):.1f} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=sorted(VARIANTS))
    parser.add_argument("--cores", default="all")
    parser.add_argument("--dry-run", action="store_true", help="list the jobs, train nothing")
    args = parser.parse_args(argv)
    os.chdir(REPO)  # the plan's paths are relative to the repository (results_dir: results)
    folder = REPO / "results" / "variants"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, (label, change) in enumerate(VARIANTS[args.stage].items()):
        config_file = folder / f"{args.stage}-{index}.yaml"
        config_file.write_text(yaml.safe_dump(overlay(args.stage, index, change)))
        evals = evaluations(resolve(REPO / "config.yaml", config_file), args.stage)
        targets = [path for e in evals.values() for path in e.values()]
        cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(REPO),
               "--cores", args.cores, "--configfile", str(REPO / "config.yaml"), str(config_file),
               "--set-threads", "warmup=1", "stage1=1", "distill=1",
               *(["--dry-run"] if args.dry_run else []), "--", *targets]
        print(f"# {label}", flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL if not args.dry_run else None)
        if not args.dry_run:
            rows.append(row(label, evals, args.stage))
    if rows:
        print(f"| variant | {args.stage} − {PREVIOUS[args.stage]}, per seed | mean ± std |\n|---|---|---|")
        print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
