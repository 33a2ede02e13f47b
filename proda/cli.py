"""``proda``: the one command line. Every registered step (proda/registry.py) is a sub-command taking
its inputs by role, like the official scripts:

    proda toycity     --config cfg.yaml --out DIR                                  (the toy benchmark)
    proda warmup      --config cfg.yaml --out run/warmup/model.pt                  (train.py --stage warm_up)
    proda soft-labels --config cfg.yaml --checkpoint W --out soft.h5               (generate_pseudo_label.py --soft)
    proda prototypes  --config cfg.yaml --checkpoint W --out protos.h5             (calc_prototype.py)
    proda stage1      --config cfg.yaml --warmup W --soft soft.h5 --prototypes P --out run/stage1/model.pt
    proda hard-labels --config cfg.yaml --checkpoint S1 --out hard.h5 [--png-dir D] (generate_pseudo_label.py --flip)
    proda stage2|stage3 --config cfg.yaml --teacher S --labels hard.h5 --out run/stage2/model.pt [--init W]
    proda evaluate    --config cfg.yaml --checkpoint S --out eval.csv              (test.py, with the config's data)
    proda evaluate    --checkpoint S --root CITYSCAPES [--split val] [--out eval.csv] (test.py on a folder)
    proda predict     --checkpoint S IMAGES... --out DIR [--overlay]               (a model on your own images)
    proda show        PATH [PATH]          (what made an artifact; what differs between two)
    proda report      --out-dir D warmup=eval/warmup.csv stage1=...
    proda prune       --results results [--delete]    (run folders no experiment uses)
    proda config-docs                                  (config/README.md from the schema)

``--config`` takes YAML files merged in order over the defaults (proda/config.schema.yaml) and
validated once. Every artifact is written with its provenance record; training steps resume from
``<out dir>/state/`` after an interruption. The workflow runs several-GPU training jobs under
``torchrun ... -m proda.cli <step> --config-json`` (DistributedDataParallel).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from proda.config import ConfigError, resolve
from proda.plan import with_toy_roots
from proda.registry import STEPS, Step

# What each input role of a step is, for the sub-commands' help.
ROLES = {
    "checkpoint": "a model checkpoint (.pt, or an official .pkl)",
    "warmup": "the warm-up model.pt",
    "soft": "the warm-up model's soft pseudo labels (.h5)",
    "prototypes": "the initial prototypes (.h5)",
    "teacher": "the teacher: the previous stage's model.pt",
    "labels": "the teacher's hard pseudo labels (.h5)",
    "init": "the warm-up model.pt (student_init: warmup_backbone)",
}
COMMANDS = {spec.command: spec for spec in STEPS.values()}


def _config(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults <- --config files, validated once (the same check as the workflow's); with
    data.toycity set, the dataset roots point into the generated benchmark. ``--config-json`` (a
    workflow job's resolved config, for torchrun) is used as it is."""
    if args.config_json:
        with open(args.config_json) as fh:
            cfg = json.load(fh)
    else:
        cfg = with_toy_roots(resolve(*(args.config or [])))
    if args.device:
        cfg["device"] = args.device
    if args.allow_pickle:
        cfg["unsafe_pickle"] = True
    return cfg


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", action="append", help="YAML config (repeatable; later files win)")
    p.add_argument("--config-json", help=argparse.SUPPRESS)  # a workflow job's config, under torchrun
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="load checkpoint/weight files that need arbitrary unpickling (trusted files only)")


def _step_parser(sub: Any, spec: Step) -> argparse.ArgumentParser:
    """The sub-command of a registered step: one ``--<role>`` per input, ``--out``, ``--state-dir``."""
    p = sub.add_parser(spec.command, help=spec.help)
    _common(p)
    p.add_argument("--out", required=spec.name != "evaluate", help="the artifact to write")
    for role in spec.consumes:
        required = role not in spec.optional and spec.name != "evaluate"
        p.add_argument(f"--{role.replace('_', '-')}", required=required,
                       help=("optional: " if role in spec.optional else "") + ROLES.get(role, role))
    if spec.trains:
        p.add_argument("--state-dir", help="resume state (default: <out dir>/state)")
    return p


def _evaluate_options(ev: argparse.ArgumentParser) -> None:
    ev.add_argument("--root", help="a Cityscapes-layout folder (instead of the config's target dataset)")
    ev.add_argument("--dataset", default="cityscapes", help="dataset layout of --root")
    ev.add_argument("--split", help="split to evaluate (default: eval.split of the config, or val)")
    ev.add_argument("--size", type=int, nargs=2, metavar=("W", "H"), help="resize images and labels (--root)")
    ev.add_argument("--save-dir", help="also write prediction PNGs here")


def _predict_options(p: argparse.ArgumentParser) -> None:
    """``proda predict``: a trained model on a user's own images (proda/predict.py)."""
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders (searched recursively) or globs (quote them)")
    p.add_argument("--checkpoint", required=True, help="model checkpoint (.pt / official .pkl)")
    p.add_argument("--out", required=True, help="output folder (mirrors each input's relative path)")
    p.add_argument("--size", nargs="+", metavar="SIZE",
                   help="model input size: W H for every image, or 'native' (no resize); default: the training "
                        "scale (the checkpoint's target size, else 2048x1024; other aspect ratios: the same area)")
    p.add_argument("--ids", choices=("trainids", "labelids"), default="trainids",
                   help="label map values: Cityscapes trainIds, or labelIds (official submission format)")
    p.add_argument("--overlay", action="store_true", help="also write the colour map blended over the image")
    p.add_argument("--alpha", type=float, default=0.5, help="colour weight of the overlay (default 0.5)")
    p.add_argument("--probs", action="store_true",
                   help="also write <name>_conf.npy: float16 probability of the predicted label")
    p.add_argument("--flip", action="store_true", help="flip test-time augmentation")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default 1)")
    p.add_argument("--workers", type=int, default=0, help="image-reading processes (default 0)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA or CPU)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--force", action="store_true", help="redo images whose outputs exist")
    p.add_argument("--allow-pickle", action="store_true",
                   help="load a checkpoint that needs arbitrary unpickling (trusted files only)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def parser() -> argparse.ArgumentParser:
    """The ``proda`` argument parser: the registered steps, then the tools around them."""
    top = argparse.ArgumentParser(prog="proda", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True)
    for spec in STEPS.values():
        p = _step_parser(sub, spec)
        if spec.name == "hard_labels":
            p.add_argument("--png-dir", help="also write label/colour PNGs here")
        if spec.name == "evaluate":
            _evaluate_options(p)
    _predict_options(sub.add_parser("predict", help="segment your own images with a trained model"))
    show = sub.add_parser("show", help="which settings and inputs made an artifact (two: what differs)")
    show.add_argument("paths", nargs="+", metavar="PATH", help="a run folder, an artifact file or its record")
    rep = sub.add_parser("report", help="summary CSV and plots from per-stage evaluation CSVs")
    rep.add_argument("--out-dir", required=True)
    rep.add_argument("evals", nargs="+", metavar="STAGE=CSV")
    prune = sub.add_parser("prune", help="list (or --delete) run folders that no experiment uses")
    prune.add_argument("--results", default="results", help="the results_dir")
    prune.add_argument("--delete", action="store_true", help="remove them (default: only list them)")
    sub.add_parser("config-docs", help="print config/README.md (every key, generated from the schema)")
    return top


def _run_step(spec: Step, args: argparse.Namespace) -> Any:
    """A registered step: in this process with its record, or (``--config-json``) as one torchrun worker."""
    from proda.steps import run_step

    cfg = _config(args)
    inputs = {role: getattr(args, role) for role in spec.consumes}
    options = {"png_dir": args.png_dir} if spec.name == "hard_labels" else {}
    if spec.name == "evaluate":
        options = {"split": args.split, "save_dir": args.save_dir}
    if args.config_json:  # a DDP worker of a workflow job: the parent checks inputs and writes the record
        state = {"state_dir": args.state_dir or str(Path(args.out).parent / "state")} if spec.trains else {}
        return spec.function(cfg, out=args.out, **inputs, **state, **options)
    return run_step(spec.name, cfg, out=args.out, inputs=inputs, state_dir=getattr(args, "state_dir", None),
                    threads=args.threads, options=options)


def _evaluate(args: argparse.Namespace) -> None:
    from proda.evaluate import format_table

    if args.root is None:
        if not args.out:
            raise ConfigError("proda evaluate: --out is required with --config (or give --root)")
        table = _run_step(STEPS["evaluate"], args)
    else:
        from proda.steps import evaluate_folder

        table = evaluate_folder(args.checkpoint, root=args.root, kind=args.dataset, split=args.split or "val",
                                size=args.size, device=args.device or "auto", out_csv=args.out,
                                save_dir=args.save_dir, allow_pickle=args.allow_pickle)
    print(format_table(table, table.n_class))


def _show(paths: Sequence[str]) -> None:
    from proda import records

    if len(paths) > 2:
        raise ConfigError("proda show takes one artifact (what made it) or two (what differs)")
    print(records.show(paths[0]) if len(paths) == 1 else records.differences(*paths))


def run(args: argparse.Namespace) -> int:
    """Dispatch one parsed command; its exit status."""
    c = args.command
    if c == "predict":  # its own summary and status (1: some images were unreadable)
        from proda.predict import run as predict

        return predict(args)
    if c == "evaluate":
        _evaluate(args)
    elif c in COMMANDS:
        _run_step(COMMANDS[c], args)
    elif c == "show":
        _show(args.paths)
    elif c == "report":
        from proda.experiment import report

        report(dict(_stage_csv(item) for item in args.evals), args.out_dir)
    elif c == "prune":
        from proda.prune import prune

        prune(args.results, delete=args.delete)
    elif c == "config-docs":
        from proda.config import config_docs

        sys.stdout.write(config_docs())
    return 0


def _stage_csv(text: str) -> tuple[str, str]:
    stage, sep, path = text.partition("=")
    if not sep or not stage or not path:
        raise ConfigError(f"expected STAGE=CSV, got {text!r}")
    return stage, path


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``proda`` with ``argv``; a known error is one line on stderr and exit status 2."""
    args = parser().parse_args(argv)
    try:
        return run(args)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"proda {args.command}: error: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
