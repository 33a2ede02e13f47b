"""Running one ``proda`` command for a workflow job: in this process, or under torchrun.

The Snakemake workers call :func:`run_step` with the rule's config view, log, threads, GPUs and
paths; it is testable without Snakemake. The command line is built from the CLI's own parser
(:func:`proda.cli.command_line`), so the torchrun launch and the in-process run take the very
same arguments.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Mapping

import proda
from proda.cli import TRAINING, command_line, main
from proda.config import ConfigError, complete, execution_settings
from proda.logs import redirect_output
from proda.steps import figures, label_quality, study_report

REPO = Path(proda.__file__).resolve().parents[1]


def torchrun_command(argv: list[str], gpus: int) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node=<gpus> -m proda.cli <argv>``:
    one DistributedDataParallel process per GPU of this node."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
            "-m", "proda.cli", *argv]


def run_step(command: str, view: Mapping[str, Any], *, run_config: Mapping[str, Any], log: str | None = None,
             threads: int = 1, gpus: int = 0, **paths: str | None) -> None:
    """Run ``proda <command>`` on the config ``view`` and ``paths``; the execution-only settings
    (device, workers, logging: never part of an artifact's identity) come from ``run_config``.

    Output goes to ``log``; a training command with ``gpus`` > 1 runs under torchrun with the
    threads split between the processes. Raises ``SystemExit`` with the command's status when
    it fails (its one-line error is then the last line of the log).
    """
    if log is not None:
        redirect_output(log)
    distributed = command in TRAINING and gpus > 1
    per_process = max(1, int(threads) // (gpus if distributed else 1))
    with tempfile.TemporaryDirectory(prefix="proda-") as tmp:
        cfg_json = Path(tmp) / "config.json"
        cfg_json.write_text(json.dumps(complete(view, execution_settings(run_config)), indent=1))
        argv = command_line(command, config_json=cfg_json, threads=per_process, **paths)
        if distributed:
            print("launching:", " ".join(torchrun_command(argv, gpus)), flush=True)
            pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
            status = subprocess.run(torchrun_command(argv, gpus), env=dict(os.environ, PYTHONPATH=pythonpath)).returncode
        else:
            status = main(argv)
    if status:
        raise SystemExit(status)


@contextmanager
def job(log: str | None) -> Iterator[None]:
    """A workflow job calling the library directly: output to ``log``, and a known error as one
    line (``proda: error: ...``) with exit status 2, as the CLI reports it."""
    if log is not None:
        redirect_output(log)
    try:
        yield
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"proda: error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def _by_prefix(files: Mapping[str, str], prefix: str) -> dict[str, str]:
    return {name[len(prefix):]: path for name, path in files.items() if name.startswith(prefix)}


def run_figures(inputs: Mapping[str, str], view: Mapping[str, Any], *, run_config: Mapping[str, Any],
                grid: str, curves: str, log: str | None = None) -> None:
    """Rule figures: the run's models (``model_<stage>``) and logs (``log_<stage>``) to its pictures."""
    with job(log):
        figures(complete(view, execution_settings(run_config)), _by_prefix(inputs, "model_"),
                _by_prefix(inputs, "log_"), grid=grid, curves=curves)


def run_label_quality(inputs: Mapping[str, str], view: Mapping[str, Any], *, run_config: Mapping[str, Any],
                      out_csv: str, plot: str, log: str | None = None) -> None:
    """Rule label_quality: the run's pseudo-label artifacts against the target train labels."""
    with job(log):
        label_quality(complete(view, execution_settings(run_config)), warmup=inputs["warmup"],
                      stage1=inputs["stage1"], soft=inputs["soft"], prototypes=inputs["prototypes"],
                      hard_stage1=inputs["hard_stage1"], hard_stage2=inputs["hard_stage2"], out_csv=out_csv,
                      plot=plot)


def run_study_report(inputs: Mapping[str, str], outputs: Mapping[str, str], layout: Mapping[str, Any],
                     log: str | None = None) -> None:
    """Rule study_report: inputs named ``summary_<seed>``, ``quality_<seed>``, ``<bound>_<seed>`` and
    ``<ablation>_<seed>``; ``layout`` names the seeds, bounds and ablations (label, stage)."""
    def per_seed(prefix: str) -> dict[int, str]:
        return {int(seed): path for seed, path in _by_prefix(inputs, f"{prefix}_").items()}

    with job(log):
        study_report(per_seed("summary"), out_dir=str(Path(outputs["summary"]).parent),
                     bounds={b: per_seed(b) for b in layout["bounds"]},
                     ablations={label: (stage, per_seed(name)) for name, (stage, label) in layout["ablations"].items()},
                     quality=per_seed("quality") if layout["quality"] else None)
