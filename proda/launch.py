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
from pathlib import Path
from typing import Any, Mapping

import proda
from proda.cli import TRAINING, command_line, main
from proda.config import complete, execution_settings
from proda.logs import redirect_output

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
