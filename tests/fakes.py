"""Stand-ins shared by the training-loop tests, and the loader of the benchmark scripts under test."""
from __future__ import annotations

import contextlib
import importlib.util
import subprocess
import sys
from collections.abc import Iterator
import os
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from proda.runtime import Runtime

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (a script folder, not a package) as a module."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class CountingStage:
    """A Stage stand-in whose single weight counts the steps taken; it sends itself ``signum``
    during step ``at`` (on every rank, or only on ``rank``). Its logged loss is the iteration plus
    the rank."""

    name = "fake"

    def __init__(self, runtime: Runtime | None = None, signum: int = 0, at: int = 0, rank: int | None = None):
        self.runtime = runtime or Runtime(device=torch.device("cpu"))
        self.student = nn.Linear(1, 1, bias=False)
        nn.init.zeros_(self.student.weight)
        self.optimizers = {"G": torch.optim.SGD(self.student.parameters(), lr=1.0)}
        self.signum, self.at, self.rank = signum, at, rank

    def modules(self) -> dict[str, nn.Module]:
        return {"student": self.student}

    def step(self, source, target, iteration: int) -> dict[str, float]:
        self.optimizers["G"].step()  # no gradients: a no-op that keeps the scheduler order right
        with torch.no_grad():
            self.student.weight += 1
        if iteration == self.at and self.rank in (None, self.runtime.rank):
            os.kill(os.getpid(), self.signum)
        return {"loss": float(iteration + self.runtime.rank)}

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state) -> None:
        return None


def snapshot_repo(root: Path) -> Path:
    """A copy of the workflow and the package under ``root/repo``, so that edits made while a long
    workflow test runs (code changes count for reruns) cannot interfere."""
    import shutil

    repo_root = BENCHMARKS.parent
    repo = root / "repo"
    repo.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("Snakefile", "config.yaml", "environment.yml"):
        shutil.copy2(repo_root / name, repo / name)
    for name in ("config", "workflow", "proda"):
        shutil.copytree(repo_root / name, repo / name, ignore=ignore)
    return repo


@contextlib.contextmanager
def lock_held_elsewhere(path: Path) -> Iterator[subprocess.Popen]:
    """Another process holding :func:`proda.files.job_lock` on ``path`` for the block (killed
    after it, which releases the lock); yields that process."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from proda.files import job_lock\n"
         f"with job_lock({str(path)!r}):\n    print('held', flush=True); sys.stdin.read()"],
        cwd=BENCHMARKS.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()
