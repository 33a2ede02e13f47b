"""``proda``: the one command line. Each pipeline step runs on its own, like the official scripts.

    proda toycity     --config cfg.yaml --out DIR                                 (the toy benchmark)
    proda warmup      --config cfg.yaml --out run/warmup/model.pt                 (train.py --stage warm_up)
    proda soft-labels --config cfg.yaml --checkpoint W --out soft.h5              (generate_pseudo_label.py --soft)
    proda prototypes  --config cfg.yaml --checkpoint W --out protos.h5            (calc_prototype.py)
    proda stage1      --config cfg.yaml --warmup W --soft soft.h5 --prototypes P --out S1
    proda hard-labels --config cfg.yaml --checkpoint S1 --out hard.h5 [--png-dir D] (generate_pseudo_label.py --flip)
    proda stage2|stage3 --config cfg.yaml --teacher S --labels hard.h5 --out S2 [--init W]
    proda evaluate    --config cfg.yaml --checkpoint S --out eval.csv             (test.py, with the config's data)
    proda evaluate    --checkpoint S --root CITYSCAPES [--split val] [--out eval.csv] (test.py on a folder)
    proda report      --out-dir D warmup=eval/warmup.csv stage1=...
    proda prune       --results results [--delete]    (run folders no experiment's manifest uses)
    proda config-docs                                  (config/README.md from the schema)

``--config`` takes YAML files merged in order over the defaults (proda/config.schema.yaml). Training
steps resume from ``<out dir>/state/`` after an interruption. Run a training step under
``torchrun --nproc_per_node=N -m proda.cli ...`` for DistributedDataParallel.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from proda.config import ConfigError, resolve
from proda.plan import with_toy_roots

TRAINING = ("warmup", "stage1", "stage2", "stage3")


def _config(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults <- --config files <- --config-json, validated (the same check as the workflow's);
    with data.toycity set, the dataset roots point into the generated benchmark."""
    overrides: list[Any] = list(args.config or [])
    if args.config_json:
        with open(args.config_json) as fh:
            overrides.append(json.load(fh))
    cfg = with_toy_roots(resolve(*overrides, checks="schema" if args.config_json else "files"))
    if args.device:
        cfg["device"] = args.device
    if args.allow_pickle:
        cfg["unsafe_pickle"] = True
    return cfg


def _state_dir(args: argparse.Namespace) -> Path:
    return Path(args.state_dir) if args.state_dir else Path(args.out).parent / "state"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", action="append", help="YAML config (repeatable; later files win)")
    p.add_argument("--config-json", help="a JSON config merged last (used by the workflow)")
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="load checkpoint/weight files that need arbitrary unpickling (trusted files only)")


def parser() -> argparse.ArgumentParser:
    """The ``proda`` argument parser (the workflow's launcher builds its commands from it)."""
    top = argparse.ArgumentParser(prog="proda", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True)

    def step(name: str, help_: str, **paths: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        _common(p)
        p.add_argument("--out", required=True, help="the artifact to write")
        for flag, text in paths.items():
            p.add_argument(f"--{flag}", required=not text.startswith("optional"), help=text)
        return p

    state = {"state-dir": "optional: resume state (default: <out dir>/state)"}
    step("toycity", "generate the toy-city benchmark (data.toycity options) into --out")
    step("warmup", "train (or import) the warm-up model", **state)
    step("soft-labels", "soft pseudo labels (HDF5)", checkpoint="the warm-up checkpoint")
    step("prototypes", "initial prototypes (HDF5)", checkpoint="the warm-up checkpoint")
    step("stage1", "stage 1 training", warmup="warm-up checkpoint", soft="soft labels (HDF5)",
         prototypes="prototypes (HDF5)", **state)
    step("hard-labels", "hard pseudo labels with flip TTA (HDF5)", checkpoint="model checkpoint",
         **{"png-dir": "optional: also write label/colour PNGs here"})
    for stage in ("stage2", "stage3"):
        step(stage, f"{stage} distillation", teacher="teacher checkpoint", labels="hard labels (HDF5)",
             init="optional: warm-up checkpoint (student_init: warmup_backbone)", **state)
    ev = sub.add_parser("evaluate", help="evaluate a checkpoint on a labelled split (the official test.py)")
    _common(ev)
    ev.add_argument("--checkpoint", required=True, help="model checkpoint (.pt / official .pkl)")
    ev.add_argument("--out", help="write the evaluation CSV here")
    ev.add_argument("--root", help="a Cityscapes-layout folder (instead of the config's target dataset)")
    ev.add_argument("--dataset", default="cityscapes", help="dataset layout of --root")
    ev.add_argument("--split", help="split to evaluate (default: eval.split of the config, or val)")
    ev.add_argument("--size", type=int, nargs=2, metavar=("W", "H"), help="resize images and labels (--root)")
    ev.add_argument("--save-dir", help="also write prediction PNGs here")
    rep = sub.add_parser("report", help="summary CSV and plots from per-stage evaluation CSVs")
    rep.add_argument("--out-dir", required=True)
    rep.add_argument("evals", nargs="+", metavar="STAGE=CSV")
    prune = sub.add_parser("prune", help="list (or --delete) run folders that no experiment's manifest uses")
    prune.add_argument("--results", default="results", help="the results_dir")
    prune.add_argument("--delete", action="store_true", help="remove them (default: only list them)")
    sub.add_parser("config-docs", help="print config/README.md (every key, generated from the schema)")
    return top


def command_line(command: str, **values: Any) -> list[str]:
    """``proda <command> --flag value ...`` from keyword names (the parser's ``dest``); None is left out."""
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    flags = {a.dest: a.option_strings[0] for a in sub._actions if a.option_strings}
    argv = [command]
    for name, value in values.items():
        if name not in flags:
            raise ValueError(f"proda {command} has no option for {name!r}")
        if value is not None and value is not False:
            argv += [flags[name]] if value is True else [flags[name], str(value)]
    return argv


def _evaluate(args: argparse.Namespace) -> None:
    from proda import steps

    if args.root is None:
        if not args.out:
            raise ConfigError("proda evaluate: --out is required with --config (or give --root)")
        table = steps.evaluate(_config(args), args.checkpoint, args.out, split=args.split, save_dir=args.save_dir)
    else:
        table = steps.evaluate_folder(args.checkpoint, root=args.root, kind=args.dataset, split=args.split or "val",
                                      size=args.size, device=args.device or "auto", out_csv=args.out,
                                      save_dir=args.save_dir, allow_pickle=args.allow_pickle)
    from proda.evaluate import format_table

    print(format_table(table, table.n_class))


def run(args: argparse.Namespace) -> None:
    """Dispatch one parsed command to :mod:`proda.steps`."""
    from proda import steps

    c = args.command
    if c == "report":
        steps.report(dict(_stage_csv(item) for item in args.evals), args.out_dir)
        return
    if c == "prune":
        steps.prune(args.results, delete=args.delete)
        return
    if c == "config-docs":
        from proda.config import config_docs

        sys.stdout.write(config_docs())
        return
    if args.threads:
        steps.set_threads(args.threads)
    if c == "evaluate":
        _evaluate(args)
        return
    cfg = _config(args)
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


def _stage_csv(text: str) -> tuple[str, str]:
    stage, sep, path = text.partition("=")
    if not sep or not stage or not path:
        raise ConfigError(f"expected STAGE=CSV, got {text!r}")
    return stage, path


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``proda`` with ``argv``; a known error is one line on stderr and exit status 2."""
    args = parser().parse_args(argv)
    try:
        run(args)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"proda {args.command}: error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
