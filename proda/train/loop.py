"""The training loop shared by every stage: schedule, logging, checkpoints, resume, model selection."""
from __future__ import annotations

import csv
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn
from torch.optim import Optimizer
from tqdm import tqdm

from proda.files import atomic_path
from proda.losses import cross_entropy
from proda.models import unwrap
from proda.train.batches import BatchStream
from proda.train.optim import poly_schedule
from proda.runtime import Runtime, rng_state, set_rng_state
from proda.train.setup import up

STATE_FILE = "last.pt"
LOG_FILE = "train.csv"


class Stage:
    """One training stage: owns its networks, optimisers and the per-iteration step.

    Subclasses set ``name``, ``student``, ``optimizers`` and implement :meth:`step`; they may add
    networks to :meth:`modules` (saved for resume) and extra state (e.g. prototypes).
    """

    name = "stage"
    student: nn.Module
    optimizers: dict[str, Optimizer]

    def __init__(self, cfg: Mapping[str, Any], runtime: Runtime):
        self.cfg, self.runtime = cfg, runtime

    def modules(self) -> dict[str, nn.Module]:
        return {"student": self.student}

    def step(self, source: dict, target: dict, iteration: int) -> dict[str, float]:
        raise NotImplementedError

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        return None

    def prototypes(self) -> torch.Tensor | None:
        return None

    def source_step(self, src: dict) -> torch.Tensor:
        """Student to train mode, zero grads, ``L_src`` at crop resolution, backward at once (§4.2 step 1)."""
        self.student.train()
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        with self.runtime.autocast():
            out = self.student(src["img"])["out"]
        loss = cross_entropy(up(out, tuple(src["img"].shape[-2:])).float(), src["label"])
        loss.backward()
        return loss

    def export_extra(self) -> dict[str, Any]:
        """Further top-level entries of the exported checkpoint (e.g. the discriminator)."""
        return {}


def _atomic_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


class Trainer:
    """Runs a :class:`Stage` for ``iterations`` steps with resume, logging and checkpointing."""

    def __init__(self, stage: Stage, source: BatchStream, target: BatchStream, *, iterations: int,
                 state_dir: str | os.PathLike, schedule_iters: int, poly_power: float = 0.9,
                 checkpoint_every: int = 1000, log_every: int = 20, validate=None, val_every: int = 0,
                 select: str = "last", progress: bool = True):
        if select not in ("last", "best_on_val"):
            raise ValueError(f"config key 'train.select' must be 'last' or 'best_on_val', got {select!r}")
        if select == "best_on_val" and (validate is None or val_every <= 0):
            raise ValueError("config key 'train.select: best_on_val' needs 'train.val_every' > 0")
        self.stage, self.source, self.target = stage, source, target
        self.iterations, self.state_dir = iterations, Path(state_dir)
        self.checkpoint_every, self.log_every = checkpoint_every, log_every
        self.validate, self.val_every, self.select, self.progress = validate, val_every, select, progress
        self.schedulers = {k: poly_schedule(o, schedule_iters, poly_power) for k, o in stage.optimizers.items()}
        self.iteration, self.best_iou, self.best_state = 0, -1.0, None
        self.state_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "modules": {k: unwrap(m).state_dict() for k, m in self.stage.modules().items()},
            "optimizers": {k: o.state_dict() for k, o in self.stage.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "streams": {"source": self.source.state_dict(), "target": self.target.state_dict()},
            "extra": self.stage.extra_state(),
            "rng": rng_state(),
            "best_iou": self.best_iou,
            "best_state": self.best_state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key, module in self.stage.modules().items():
            unwrap(module).load_state_dict(state["modules"][key])
        for key, opt in self.stage.optimizers.items():
            opt.load_state_dict(state["optimizers"][key])
        for key, sched in self.schedulers.items():
            sched.load_state_dict(state["schedulers"][key])
        self.source.load_state_dict(state["streams"]["source"])
        self.target.load_state_dict(state["streams"]["target"])
        self.stage.load_extra_state(state["extra"])
        set_rng_state(state["rng"])
        self.iteration, self.best_iou, self.best_state = state["iteration"], state["best_iou"], state["best_state"]

    def _resume(self) -> None:
        path = self.state_dir / STATE_FILE
        if path.is_file():
            state = torch.load(path, map_location=self.stage.runtime.device, weights_only=False)
            self.load_state_dict(state)
            self._trim_log()
            print(f"[{self.stage.name}] resumed from {path} at iteration {self.iteration}", flush=True)

    def _save_state(self) -> None:
        if self.stage.runtime.is_main:
            _atomic_save(self.state_dict(), self.state_dir / STATE_FILE)
        self.stage.runtime.barrier()

    # ------------------------------------------------------------------ logging
    def _log(self, row: dict[str, float]) -> None:
        if not self.stage.runtime.is_main:
            return
        path = self.state_dir / LOG_FILE
        new = not path.exists() or path.stat().st_size == 0
        with open(path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)

    def _trim_log(self) -> None:
        """Drop log rows written after the checkpoint a resumed run starts from."""
        path = self.state_dir / LOG_FILE
        if not path.is_file() or not self.stage.runtime.is_main:
            return
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        if not rows:
            return
        keep = [r for r in rows if int(r["iteration"]) <= self.iteration]
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(keep)

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        """Train until ``iterations``, resuming from the state directory when possible."""
        self._resume()
        runtime = self.stage.runtime
        interactive = sys.stderr.isatty()  # in log files: one plain line per log_every instead of a bar
        bar = tqdm(total=self.iterations, initial=self.iteration, desc=self.stage.name,
                   disable=not (self.progress and runtime.is_main and interactive), dynamic_ncols=True,
                   mininterval=1.0)
        start, done = time.perf_counter(), 0
        while self.iteration < self.iterations:
            src, tgt = next(self.source), next(self.target)
            self.iteration += 1
            losses = self.stage.step(src, tgt, self.iteration)
            for sched in self.schedulers.values():
                sched.step()
            done += 1
            ips = done * self.source.batch_size / max(time.perf_counter() - start, 1e-9)
            bar.update(1)
            bar.set_postfix({**{k: f"{v:.3f}" for k, v in losses.items()}, "img/s": f"{ips:.1f}"})
            if self.iteration % self.log_every == 0 or self.iteration == self.iterations:
                lr = next(iter(self.stage.optimizers.values())).param_groups[0]["lr"]
                self._log({"iteration": self.iteration, **losses, "lr": lr, "images_per_s": ips})
                if not interactive and runtime.is_main:
                    scalars = " ".join(f"{k}={v:.4f}" for k, v in losses.items())
                    print(f"[{self.stage.name}] {self.iteration}/{self.iterations} {scalars} lr={lr:.3g} "
                          f"img/s={ips:.1f}", flush=True)
            if self.val_every and self.iteration % self.val_every == 0:
                self._validate()
            if self.iteration % self.checkpoint_every == 0 or self.iteration == self.iterations:
                self._save_state()
        bar.close()

    def _validate(self) -> None:
        miou = float(self.validate(unwrap(self.stage.student)))
        print(f"[{self.stage.name}] iteration {self.iteration}: target val mIoU {miou:.2f}", flush=True)
        if self.select == "best_on_val" and miou >= self.best_iou:
            self.best_iou = miou
            self.best_state = {k: v.detach().cpu().clone() for k, v in unwrap(self.stage.student).state_dict().items()}

    def discard_state(self) -> None:
        """Remove the resume checkpoint once the final model is exported (the scalar log stays)."""
        if self.stage.runtime.is_main:
            (self.state_dir / STATE_FILE).unlink(missing_ok=True)

    def final_student_state(self) -> dict[str, torch.Tensor]:
        """The exported weights: the last ones, or the best on target val when so selected."""
        if self.select == "best_on_val" and self.best_state is not None:
            return self.best_state
        return unwrap(self.stage.student).state_dict()
