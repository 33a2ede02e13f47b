"""Command line: each pipeline step runnable on its own, like the official scripts.

    proda warmup      --config cfg.yaml --out results/x/warmup/model.pt          (train.py --stage warm_up)
    proda soft-labels --config cfg.yaml --checkpoint W --out soft.h5             (generate_pseudo_label.py --soft)
    proda prototypes  --config cfg.yaml --checkpoint W --out protos.h5           (calc_prototype.py)
    proda stage1      --config cfg.yaml --warmup W --soft soft.h5 --prototypes P --out S1
    proda hard-labels --config cfg.yaml --checkpoint S1 --out hard.h5 [--png-dir D] (generate_pseudo_label.py --flip)
    proda stage2|stage3 --config cfg.yaml --teacher S --labels hard.h5 --out S2 [--init W]
    proda evaluate    --config cfg.yaml --checkpoint S --out eval.csv            (test.py)
    proda report      --out-dir D warmup=eval/warmup.csv stage1=...
    proda toycity     --config cfg.yaml --out DIR

Run a training step under ``torchrun --nproc_per_node=N -m proda.cli ...`` for DistributedDataParallel.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from proda import steps
from proda.config import ConfigError, deep_merge, resolve


def _config(args: argparse.Namespace) -> dict[str, Any]:
    cfg = resolve(*(args.config or []))
    if args.config_json:
        with open(args.config_json) as fh:
            cfg = deep_merge(cfg, json.load(fh))
    if args.device:
        cfg["device"] = args.device
    return cfg


def _state_dir(args: argparse.Namespace) -> Path:
    return Path(args.state_dir) if args.state_dir else Path(args.out).parent / "state"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="proda", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str, **paths: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.add_argument("--config", action="append", help="YAML config (repeatable; later files win)")
        p.add_argument("--config-json", help="a JSON config merged last (used by the workflow)")
        p.add_argument("--device", help="auto | cpu | cuda")
        p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
        p.add_argument("--out", required=True)
        for flag, text in paths.items():
            p.add_argument(f"--{flag}", required=not text.startswith("optional"), help=text)
        return p

    add("toycity", "generate the toy-city benchmark")
    add("warmup", "train (or import) the warm-up model", **{"state-dir": "optional: resume state"})
    add("soft-labels", "soft pseudo labels (HDF5)", checkpoint="the warm-up checkpoint")
    add("prototypes", "initial prototypes (HDF5)", checkpoint="the warm-up checkpoint")
    add("stage1", "stage 1 training", warmup="warm-up checkpoint", soft="soft labels (HDF5)",
        prototypes="prototypes (HDF5)", **{"state-dir": "optional: resume state"})
    add("hard-labels", "hard pseudo labels with flip TTA (HDF5)", checkpoint="model checkpoint",
        **{"png-dir": "optional: also write label/colour PNGs here"})
    for stage in ("stage2", "stage3"):
        add(stage, f"{stage} distillation", teacher="teacher checkpoint", labels="hard labels (HDF5)",
            init="optional: warm-up checkpoint (student_init: warmup_backbone)",
            **{"state-dir": "optional: resume state"})
    add("evaluate", "evaluate a checkpoint on the target split (CSV)", checkpoint="model checkpoint")
    rep = sub.add_parser("report", help="summary CSV and plots from per-stage evaluation CSVs")
    rep.add_argument("--out-dir", required=True)
    rep.add_argument("evals", nargs="+", metavar="STAGE=CSV")
    return parser


def run(args: argparse.Namespace) -> None:
    """Dispatch one parsed command to :mod:`proda.steps`."""
    if args.command == "report":
        steps.report(dict(item.split("=", 1) for item in args.evals), args.out_dir)
        return
    cfg = _config(args)
    if args.threads:
        steps.set_threads(args.threads)
    c = args.command
    if c == "toycity":
        steps.toycity(cfg, args.out)
    elif c == "warmup":
        steps.warmup(cfg, args.out, _state_dir(args))
    elif c == "soft-labels":
        steps.soft_labels(cfg, args.checkpoint, args.out)
    elif c == "prototypes":
        steps.prototypes(cfg, args.checkpoint, args.out)
    elif c == "stage1":
        steps.stage1(cfg, args.warmup, args.soft, args.prototypes, args.out, _state_dir(args))
    elif c == "hard-labels":
        steps.hard_labels(cfg, args.checkpoint, args.out, args.png_dir)
    elif c in ("stage2", "stage3"):
        steps.distill(cfg, c, args.teacher, args.labels, args.out, _state_dir(args), args.init)
    elif c == "evaluate":
        table = steps.evaluate(cfg, args.checkpoint, args.out)
        print(f"mIoU {100 * table.miou:.2f}  ->  {args.out}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        run(args)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"proda {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
