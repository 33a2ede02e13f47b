"""Shared by the thin Snakemake workers: log redirection, threads, the full step config, the
artifact store shared by the experiments of a results_dir, resume-state hygiene and the
multi-GPU (torchrun) launch. All the method's logic lives in proda.steps."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import proda
from proda.config import complete

REPO = Path(proda.__file__).resolve().parents[1]
COMPLETE = "complete.json"  # marker of a finished store entry
# Per-iteration scalars of a training step, relative to its model's folder (proda writes it
# into the state dir; beside the model is accepted too).
TRAIN_LOGS = ("state/train.csv", "train.csv")


def redirect_output(log_path: str) -> None:
    """Send stdout/stderr of this process (Python, C extensions, children) to the rule's log."""
    os.environ.setdefault("TQDM_MININTERVAL", "30")  # progress bars: a line every 30 s in a log file
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)


def step_config(sm: Any) -> dict[str, Any]:
    """The rule's step view completed with defaults and the run's execution-only settings
    (device, amp, num_workers, log_every: not tracked, they never change an artifact)."""
    run_cfg = sm.config
    extra = {"device": run_cfg["device"], "amp": run_cfg["amp"],
             "data": {"num_workers": run_cfg["data"]["num_workers"]},
             "train": {"log_every": run_cfg["train"]["log_every"]}}
    return complete(sm.params.cfg, extra)


def code_fingerprint() -> str:
    """Digest of the code that computes artifacts: proda's sources and these workers."""
    h = hashlib.sha256()
    files = [*REPO.glob("proda/**/*.py"), *REPO.glob("proda/**/*.yaml"),
             *Path(__file__).resolve().parent.glob("*.py")]
    for path in sorted(set(files)):
        h.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


class Store:
    """Finished artifacts filed by provenance key under <results_dir>/store/<rule>-<key>/.

    An entry holds a hard link (a copy across filesystems) of the output of the job that
    computed it, a copy of its training log, and a marker naming the code fingerprint it was
    computed with; it is reused only under the same code. A job that reuses an entry gets a
    symlink to it (and a copy of the log). Deleting the store is safe: the experiments that
    computed the artifacts keep their files, those that linked them recompute on their next run."""

    def __init__(self, sm: Any) -> None:
        self.entry = Path(sm.config["results_dir"]) / "store" / f"{sm.rule}-{sm.params.key}"
        self.output = Path(sm.output[0])
        self.code = code_fingerprint()

    def fetch(self) -> bool:
        """Symlink a finished entry into place; False when there is none for this code."""
        marker = self.entry / COMPLETE
        if not marker.is_file() or json.loads(marker.read_text())["code"] != self.code:
            return False
        _symlink(self.entry / self.output.name, self.output)
        _copy_logs(self.entry, self.output.parent)
        print(f"reused {self.entry} (same config, inputs and code)", flush=True)
        return True

    def put(self) -> None:
        """File the job's output (hard link: artifacts are only ever replaced, never edited in
        place) and a copy of its training log as a new entry, atomically."""
        tmp = self.entry.with_name(f"{self.entry.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _link(self.output, tmp / self.output.name)
        _copy_logs(self.output.parent, tmp)
        (tmp / COMPLETE).write_text(json.dumps({"code": self.code}) + "\n")
        shutil.rmtree(self.entry, ignore_errors=True)  # a stale entry of older code
        try:
            os.rename(tmp, self.entry)
        except OSError:  # filed meanwhile by a concurrent job: keep that one
            shutil.rmtree(tmp, ignore_errors=True)


def _copy_logs(src_dir: Path, dst_dir: Path) -> None:
    """Copy the training log(s) (small, and appended to on resume: never linked)."""
    for rel in TRAIN_LOGS:
        if (src_dir / rel).is_file():
            (dst_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src_dir / rel, dst_dir / rel)


def _symlink(target: Path, link: Path) -> None:
    """Point ``link`` at ``target`` with a relative symlink (replacing ``link``). Snakemake
    touches outputs after each job; a symlink is touched itself, never the shared target."""
    tmp = link.with_name(f".{link.name}.tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(target, link.parent), tmp)
    os.replace(tmp, link)


def _link(src: Path, dst: Path) -> None:
    """Hard-link src to dst (replacing dst); copy where hard links are impossible."""
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def prepare_state_dir(state_dir: str, key: str) -> None:
    """Keep resume checkpoints (and train.csv) only if this very job wrote them (same
    provenance key and code): a rerun after a crash or time-out resumes, a rerun after any
    change starts afresh."""
    path = Path(state_dir)
    stamp = path / "job.key"
    if not (stamp.is_file() and stamp.read_text().strip() == key):
        shutil.rmtree(path, ignore_errors=True)
        (path.parent / "train.csv").unlink(missing_ok=True)
    path.mkdir(parents=True, exist_ok=True)
    stamp.write_text(key + "\n")


# proda.cli flags of the training steps' keyword arguments (the CLI mirrors proda.steps).
CLI_FLAGS = {"warmup_ckpt": "--warmup", "soft_h5": "--soft", "prototypes_h5": "--prototypes",
             "teacher_ckpt": "--teacher", "hard_h5": "--labels", "init_ckpt": "--init",
             "out_ckpt": "--out", "state_dir": "--state-dir"}


def torchrun_command(function: str, cfg_json: str, gpus: int, threads: int, kwargs: dict[str, Any]) -> list[str]:
    """`torchrun --standalone --nproc_per_node=<gpus> -m proda.cli <command> --config-json F ...`:
    one DistributedDataParallel process per GPU of this node."""
    command = kwargs.get("stage", function)  # distill runs as `proda stage2|stage3`
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
           "-m", "proda.cli", command, "--config-json", cfg_json,
           "--threads", str(max(1, threads // gpus))]
    for name, value in kwargs.items():
        if name in CLI_FLAGS and value is not None:
            cmd += [CLI_FLAGS[name], str(value)]
    return cmd


def _torchrun(function: str, cfg: dict[str, Any], gpus: int, threads: int, kwargs: dict[str, Any]) -> None:
    cfg_json = Path(kwargs["state_dir"]) / "config.json"
    cfg_json.write_text(json.dumps(cfg, indent=1))
    cmd = torchrun_command(function, str(cfg_json), gpus, threads, kwargs)
    print("launching:", " ".join(cmd), flush=True)
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    subprocess.run(cmd, check=True, env=dict(os.environ, PYTHONPATH=pythonpath))


def run(sm: Any, function: str, *, training: bool = False, **kwargs: Any) -> None:
    """Worker body: reuse a stored artifact, or compute it with ``proda.steps.<function>(cfg,
    **kwargs)`` (training steps: in one process, or under torchrun when ``gpu`` > 1)."""
    redirect_output(sm.log[0])
    store = Store(sm) if getattr(sm.params, "key", None) else None  # toycity: no store
    if store is not None and store.fetch():
        return
    import torch

    torch.set_num_threads(max(1, int(sm.threads)))
    cfg = step_config(sm)
    gpus = int(sm.resources.get("gpu", 0) or 0)
    if training:
        prepare_state_dir(kwargs["state_dir"], f"{sm.params.key} {store.code}")
    if training and gpus > 1:
        _torchrun(function, cfg, gpus, int(sm.threads), kwargs)
    else:
        from proda import steps

        getattr(steps, function)(cfg, **kwargs)
    if store is not None:
        store.put()


def report(sm: Any, eval_csvs: dict[str, str], out_dir: str) -> None:
    """Worker body of the report (cheap, never stored)."""
    redirect_output(sm.log[0])
    from proda import steps

    steps.report(eval_csvs, out_dir)
