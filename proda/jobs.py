"""Running one registered step: the workflow's jobs and the CLI both come through :func:`run_step`.

A job checks its inputs against their provenance records, holds its artifact's lock (two runs that
share a results directory never write one folder at once), calls the step's function in its own
process (under torchrun only when a training job has several GPUs) and writes the artifact's
record. Nothing here merges or validates the config: the Snakefile or the CLI did that once.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Mapping

import proda
from proda import records
from proda.config import ConfigError, execution_settings, job_config, step_view
from proda.files import job_lock
from proda.logs import redirect_output
from proda.registry import TRAIN_LOG, Step, step

REPO = Path(proda.__file__).resolve().parents[1]
PathLike = str | os.PathLike


def node_of(spec: Step, out: PathLike) -> Path:
    """The artifact a step's ``out`` belongs to: a model's folder, a file without its suffix, a folder."""
    out = Path(out)
    if spec.trains:
        return out.parent
    return out if spec.output == "folder" else out.with_suffix("")


def record_of(spec: Step, out: PathLike) -> Path:
    """Where the record of the artifact written to ``out`` goes."""
    node = node_of(spec, out)
    return node / records.RECORD if spec.trains else node.parent / f"{node.name}.{records.RECORD}"


def torchrun_command(argv: list[str], gpus: int) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node=<gpus> -m proda.cli <argv>``:
    one DistributedDataParallel process per GPU of this node."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
            "-m", "proda.cli", *argv]


def run_step(name: str, cfg: Mapping[str, Any], *, out: PathLike, inputs: Mapping[str, PathLike | None],
             state_dir: PathLike | None = None, threads: int = 0, gpus: int = 0,
             view: Mapping[str, Any] | None = None, options: Mapping[str, Any] | None = None) -> Any:
    """Run the registered step ``name`` on ``cfg`` and write ``out`` and its record.

    ``inputs``: role -> path; the step's function receives the roles it consumes, every input is
    checked against its record first (a damaged one stops the job in one line). ``view`` (default:
    the step's view of ``cfg``) is what the record says made the artifact; ``options``: extra keyword
    arguments of the function that change no artifact (e.g. ``png_dir``). Returns what it returns."""
    spec = step(name)
    given = {role: str(path) for role, path in inputs.items() if path}
    missing = [role for role in spec.consumes if role not in given and role not in spec.optional]
    if missing:
        raise ConfigError(f"step {name} needs the input(s) {', '.join(missing)}")
    checked = {role: records.verify(path) for role, path in given.items()}
    if threads:
        import torch

        torch.set_num_threads(max(1, int(threads)))
    main = int(os.environ.get("RANK", "0")) == 0  # under `torchrun -m proda.cli`, rank 0 locks and records
    with job_lock(node_of(spec, out)) if main else nullcontext():
        kwargs: dict[str, Any] = {role: given.get(role) for role in spec.consumes}
        if spec.trains:
            kwargs["state_dir"] = str(state_dir or Path(out).parent / "state")
        if spec.trains and gpus > 1:
            result = _torchrun(spec, cfg, out, kwargs, gpus, threads)
        else:
            result = spec.function(cfg, out=str(out), **kwargs, **(options or {}))
        if main:
            records.write(name, _written(spec, out), view if view is not None else step_view(cfg, name), checked,
                          record_of(spec, out))
    return result


def _written(spec: Step, out: PathLike) -> dict[str, PathLike]:
    """The files a step wrote for ``out`` (a training step: its model and its log)."""
    return {"model": out, "log": Path(out).with_name(TRAIN_LOG)} if spec.trains else {"out": out}


def _torchrun(spec: Step, cfg: Mapping[str, Any], out: PathLike, kwargs: Mapping[str, Any], gpus: int,
              threads: int) -> None:
    """The step's function in ``gpus`` DistributedDataParallel processes (``proda <step> --config-json``)."""
    with tempfile.TemporaryDirectory(prefix="proda-") as tmp:
        cfg_json = Path(tmp) / "config.json"
        cfg_json.write_text(json.dumps(dict(cfg), indent=1))
        argv = [spec.command, "--config-json", str(cfg_json), "--out", str(out),
                "--threads", str(max(1, int(threads) // gpus))]
        for role, path in kwargs.items():
            if path is not None:
                argv += [f"--{role.replace('_', '-')}", str(path)]
        command = torchrun_command(argv, gpus)
        print("launching:", " ".join(command), flush=True)
        pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        status = subprocess.run(command, env=dict(os.environ, PYTHONPATH=pythonpath)).returncode
    if status:
        raise SystemExit(status)


@contextmanager
def job(log: PathLike | None, name: str = "") -> Iterator[None]:
    """A workflow job: output to ``log``, and a known error as one line (``proda <name>: error: ...``)
    with exit status 2, as the CLI reports it."""
    if log is not None:
        redirect_output(log)
    try:
        yield
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"proda{' ' + name if name else ''}: error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def run_rule(name: str, view: Mapping[str, Any], *, run_config: Mapping[str, Any], inputs: Mapping[str, Any],
             out: str, log: str | None = None, threads: int = 1, gpus: int = 0) -> None:
    """A Snakemake job of the step ``name``: its view (the rule's params) plus the run's execution
    settings, the rule's named inputs and its main output."""
    with job(log, step(name).command):
        run_step(name, job_config(view, execution_settings(run_config)), out=out,
                 inputs={role: _one(path) for role, path in inputs.items()}, threads=threads, gpus=gpus, view=view)


def _one(value: Any) -> str | None:
    """A Snakemake named input: a path, or an empty list for an absent optional one."""
    if isinstance(value, (list, tuple)):
        return str(value[0]) if value else None
    return str(value) if value else None


def _checked(inputs: Mapping[str, Any]) -> dict[str, str]:
    """A summary job's inputs, each checked against its record first (as every step's are)."""
    paths = {name: _one(path) for name, path in inputs.items()}
    for path in paths.values():
        if path:
            records.verify(path)
    return {name: path for name, path in paths.items() if path}


def _by_prefix(files: Mapping[str, str], prefix: str) -> dict[str, str]:
    return {name[len(prefix):]: path for name, path in files.items() if name.startswith(prefix)}


def run_figures(inputs: Mapping[str, str], view: Mapping[str, Any], *, run_config: Mapping[str, Any],
                grid: str, curves: str, log: str | None = None) -> None:
    """Rule figures: the run's models (``model_<stage>``) and logs (``log_<stage>``) to its pictures."""
    from proda.steps import figures

    with job(log):
        inputs = _checked(inputs)
        figures(job_config(view, execution_settings(run_config)), _by_prefix(inputs, "model_"),
                _by_prefix(inputs, "log_"), grid=grid, curves=curves)


def run_label_quality(inputs: Mapping[str, str], view: Mapping[str, Any], *, run_config: Mapping[str, Any],
                      out_csv: str, plot: str, log: str | None = None) -> None:
    """Rule label_quality: the run's pseudo-label artifacts against the target train labels."""
    from proda.steps import label_quality

    with job(log):
        inputs = _checked(inputs)
        label_quality(job_config(view, execution_settings(run_config)), warmup=inputs["warmup"],
                      stage1=inputs["stage1"], soft=inputs["soft"], prototypes=inputs["prototypes"],
                      hard_stage1=inputs["hard_stage1"], hard_stage2=inputs["hard_stage2"], out_csv=out_csv,
                      plot=plot)


def run_manifest(used: Mapping[str, Any], out: str, log: str | None = None) -> None:
    """Rule manifest: the run folders and artifacts one run uses."""
    from proda.steps import write_manifest

    with job(log):
        write_manifest(used, out)


def run_report(evals: Mapping[str, str], *, summary: str, eval_dir: str, log: str | None = None) -> None:
    """Rule report: a run's evaluation CSVs (checked) to its summary table and plots."""
    from proda.steps import experiment_report

    with job(log):
        experiment_report(_checked(evals), summary=summary, eval_dir=eval_dir)


def run_study_report(inputs: Mapping[str, str], outputs: Mapping[str, str], layout: Mapping[str, Any],
                     log: str | None = None) -> None:
    """Rule study_report: inputs named ``summary_<seed>``, ``quality_<seed>``, ``<bound>_<seed>`` and
    ``<ablation>_<seed>``; ``layout`` names the seeds, bounds and ablations (label, stage)."""
    from proda.steps import study_report

    def per_seed(prefix: str) -> dict[int, str]:
        return {int(seed): path for seed, path in _by_prefix(inputs, f"{prefix}_").items()}

    with job(log):
        inputs = _checked(inputs)
        study_report(per_seed("summary"), out_dir=str(Path(outputs["summary"]).parent),
                     bounds={b: per_seed(b) for b in layout["bounds"]},
                     ablations={label: (stage, per_seed(name)) for name, (stage, label) in layout["ablations"].items()},
                     quality=per_seed("quality") if layout["quality"] else None)
