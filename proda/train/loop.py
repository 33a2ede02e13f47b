"""The training loop shared by every stage: schedule, logging, checkpoints, resume, pre-emption,
model selection."""
from __future__ import annotations

import contextlib
import csv
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.optim import Optimizer
from tqdm import tqdm

from proda.files import atomic_path, reporting_full_disk
from proda.integrity import archive_damage
from proda.losses import cross_entropy
from proda.models import unwrap
from proda.runtime import Runtime, rng_state, set_rng_state
from proda.train.batches import BatchStream
from proda.train.optim import poly_schedule
from proda.resize import up

STATE_FILE = "last.pt"
PREVIOUS_FILE = "previous.pt"  # the resume checkpoint before the last one, kept as a fallback
CORRUPT_SUFFIX = ".corrupt"    # an unreadable resume checkpoint is renamed to <name>.corrupt
LOG_FILE = "train.csv"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # SLURM's pre-emption / time limit, Ctrl-C


class NonFiniteLossError(ValueError):
    """Training stopped on a loss term that is NaN or infinite (one line: stage, iteration, terms)."""


class Preempted(SystemExit):
    """Training stopped by a signal after writing its resume checkpoint: exit status 128 + signal
    number (143 for SIGTERM, 130 for SIGINT), like a process the signal had killed."""

    def __init__(self, signum: int, message: str):
        super().__init__(128 + signum)
        self.signum, self.message = signum, message

    def __str__(self) -> str:
        return self.message


def synchronise(losses: Mapping[str, float], runtime: Runtime,
                stop: int = 0) -> tuple[dict[str, float], int]:
    """The losses averaged over the ranks and the stop signal any rank received (0: none), in one
    all-reduce (nothing to do in a single process).

    Each rank's loss is its share of the global-batch loss times the world size
    (:mod:`proda.losses`), so the average is the loss of the global batch.
    """
    if not runtime.distributed:
        return dict(losses), stop
    flags = [float(stop == s) for s in STOP_SIGNALS]
    packed = torch.tensor([*flags, *losses.values()], dtype=torch.float64, device=runtime.device)
    dist.all_reduce(packed)
    values = (packed[len(flags):] / runtime.world_size).tolist()
    stop = next((int(s) for s, n in zip(STOP_SIGNALS, packed[:len(flags)].tolist()) if n > 0), 0)
    return dict(zip(losses, values)), stop


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
        """Student to train mode, zero grads, ``L_src`` at crop resolution, backward at once (§4.2 step 1).

        Under DDP the masked means (this one included) are normalised over the global batch
        (:mod:`proda.losses`); the returned values are the rank's shares, which :func:`synchronise`
        averages into the global-batch losses for the log.
        """
        self.student.train()
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        with self.runtime.autocast():
            out = self.student(src["img"])["out"]
        # logits leave autocast and are upsampled and reduced in float32
        loss = cross_entropy(up(out.float(), tuple(src["img"].shape[-2:])), src["label"],
                             ddp=self.runtime.distributed)
        loss.backward()
        return loss

    def export_extra(self) -> dict[str, Any]:
        """Further top-level entries of the exported checkpoint (e.g. the discriminator)."""
        return {}


def _portable_rng(state: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`rng_state` with numpy's state as tensors and plain values, so that the resume
    checkpoint loads with ``weights_only=True`` (python's state is a tuple of ints already)."""
    name, keys, pos, has_gauss, cached = state["numpy"]
    numpy = {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
             "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    return {**state, "numpy": numpy}


def _restore_rng(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`_portable_rng`, then :func:`set_rng_state`."""
    n = state["numpy"]
    set_rng_state({**state, "numpy": (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                                      n["cached_gaussian"]),
                   "torch": state["torch"].cpu(),
                   **({"cuda": [t.cpu() for t in state["cuda"]]} if "cuda" in state else {})})


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_state(path: Path) -> Any:
    """A resume checkpoint, its zip CRCs checked first (``torch.load`` does not check them)."""
    problem = archive_damage(path)
    if problem is not None:
        raise ValueError(f"damaged: {problem}")
    return torch.load(path, map_location="cpu", weights_only=True)


def _nonfinite(losses: Mapping[str, float]) -> dict[str, float]:
    """The loss terms that are NaN or infinite."""
    return {k: v for k, v in losses.items() if not np.isfinite(v)}


class NonFiniteGuard:
    """Skips the optimiser steps whose gradients are not all finite (none taken, no state changed).

    A step pre-hook on each optimiser of a stage: when any gradient it would apply is NaN or
    infinite, every gradient of that optimiser is dropped (``grad = None``), so its ``step()``
    changes neither the weights nor the momentum. :attr:`skipped` names the optimisers skipped
    since the last :meth:`reset`. Costs one reduction and one device sync per optimiser step.
    """

    def __init__(self, optimizers: Mapping[str, Optimizer]):
        self.skipped: list[str] = []
        self._handles = [opt.register_step_pre_hook(self._hook(name)) for name, opt in optimizers.items()]

    def _hook(self, name: str):
        def hook(opt: Optimizer, args: Any, kwargs: Any) -> None:
            grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
            if not grads or bool(torch.stack(torch._foreach_norm(grads)).isfinite().all()):
                return
            for group in opt.param_groups:
                for param in group["params"]:
                    param.grad = None
            self.skipped.append(name)
        return hook

    def reset(self) -> None:
        self.skipped = []

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


class Trainer:
    """Runs a :class:`Stage` for ``iterations`` steps with resume, logging and checkpointing."""

    def __init__(self, stage: Stage, source: BatchStream, target: BatchStream, *, iterations: int,
                 state_dir: str | os.PathLike, schedule_iters: int, poly_power: float = 0.9,
                 checkpoint_every: int = 1000, log_every: int = 20, validate=None, val_every: int = 0,
                 select: str = "last", progress: bool = True, max_nonfinite_skips: int = 0):
        if select not in ("last", "best_on_val"):
            raise ValueError(f"config key 'train.select' must be 'last' or 'best_on_val', got {select!r}")
        if select == "best_on_val" and (validate is None or val_every <= 0):
            raise ValueError("config key 'train.select: best_on_val' needs 'train.val_every' > 0")
        if int(max_nonfinite_skips) != max_nonfinite_skips or max_nonfinite_skips < 0:
            raise ValueError(f"config key 'train.max_nonfinite_skips' must be an integer >= 0, "
                             f"got {max_nonfinite_skips!r}")
        self.stage, self.source, self.target = stage, source, target
        self.iterations, self.state_dir = iterations, Path(state_dir)
        self.checkpoint_every, self.log_every = checkpoint_every, log_every
        self.validate, self.val_every, self.select, self.progress = validate, val_every, select, progress
        self.schedulers = {k: poly_schedule(o, schedule_iters, poly_power) for k, o in stage.optimizers.items()}
        self.iteration, self.best_iou, self.best_state = 0, -1.0, None
        self.pending_validation = False  # stopped by a signal before the validation due at `iteration`
        self._signal = 0
        self.max_nonfinite_skips, self.nonfinite_skips = int(max_nonfinite_skips), 0
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
            "rng": _portable_rng(rng_state()),
            "best_iou": self.best_iou,
            "best_state": self.best_state,
            "pending_validation": self.pending_validation,
            "nonfinite_skips": self.nonfinite_skips,
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
        _restore_rng(state["rng"])
        self.iteration, self.best_iou, self.best_state = state["iteration"], state["best_iou"], state["best_state"]
        self.pending_validation = bool(state.get("pending_validation", False))
        self.nonfinite_skips = int(state.get("nonfinite_skips", 0))

    def _resume(self) -> None:
        """Resume from ``last.pt``, else ``previous.pt``; an unreadable one (e.g. truncated) is
        reported in one line and set aside as ``<name>.corrupt``. Without either: from zero."""
        runtime = self.stage.runtime
        for path in (self.state_dir / STATE_FILE, self.state_dir / PREVIOUS_FILE):
            if not path.is_file():  # every rank sees the same files: nothing is renamed before the vote
                continue
            state, error = None, ""
            try:
                state = _read_state(path)
            except Exception as exc:  # noqa: BLE001 - any failure to read it means an unusable file
                error = _first_line(exc)
            if not _every_rank(state is not None, runtime):
                if runtime.is_main:
                    aside = path.with_name(path.name + CORRUPT_SUFFIX)
                    os.replace(path, aside)
                    reason = error or "unreadable on another rank"
                    print(f"[{self.stage.name}] resume checkpoint {path} is unreadable ({reason}); set aside as "
                          f"{aside}", file=sys.stderr, flush=True)
                continue
            try:
                self.load_state_dict(state)
            except (KeyError, RuntimeError, ValueError, TypeError) as exc:
                raise ValueError(f"resume checkpoint {path} does not fit this {self.stage.name} run "
                                 f"({_first_line(exc)}); remove {self.state_dir} to start afresh") from exc
            if runtime.is_main:
                print(f"[{self.stage.name}] resumed from {path} at iteration {self.iteration}", flush=True)
            return

    def _save_state(self) -> None:
        """Write ``last.pt`` atomically, keeping the one it replaces as ``previous.pt``."""
        if self.stage.runtime.is_main:
            path = self.state_dir / STATE_FILE
            with atomic_path(path) as tmp:
                torch.save(self.state_dict(), tmp)
                if path.is_file():
                    os.replace(path, self.state_dir / PREVIOUS_FILE)
        self.stage.runtime.barrier()

    # ------------------------------------------------------------------ logging
    def _log(self, row: dict[str, float]) -> None:
        if not self.stage.runtime.is_main:
            return
        path = self.state_dir / LOG_FILE
        new = not path.exists() or path.stat().st_size == 0
        with reporting_full_disk(path), open(path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)

    def _trim_log(self) -> None:
        """Drop log rows written after the iteration a run starts from (0 when it starts afresh):
        the rows of a killed run past its last resume checkpoint."""
        path = self.state_dir / LOG_FILE
        if not path.is_file() or not self.stage.runtime.is_main:
            return
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        if not rows:
            return
        keep = [r for r in rows if int(r["iteration"]) <= self.iteration]
        with reporting_full_disk(path), open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(keep)

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        """Train until ``iterations``, resuming from the state directory when possible.

        SIGTERM or SIGINT ends the current iteration, writes the resume checkpoint and raises
        :class:`Preempted` (every rank stops at the same iteration); a rerun resumes there.
        """
        with self._catch_stop_signals():
            self._resume()
            self._trim_log()
            if self.pending_validation:  # due when a signal stopped the previous run
                self.pending_validation = False
                self._validate()
            self._loop()

    def _loop(self) -> None:
        runtime = self.stage.runtime
        interactive = sys.stderr.isatty()  # in log files: one plain line per log_every instead of a bar
        bar = tqdm(total=self.iterations, initial=self.iteration, desc=self.stage.name,
                   disable=not (self.progress and runtime.is_main and interactive), dynamic_ncols=True,
                   mininterval=1.0)
        start, done = time.perf_counter(), 0
        guard = NonFiniteGuard(self.stage.optimizers) if self.max_nonfinite_skips else None
        try:
            while self.iteration < self.iterations:
                src, tgt = next(self.source), next(self.target)
                self.iteration += 1
                if guard is not None:
                    guard.reset()
                losses = self.stage.step(src, tgt, self.iteration)
                for sched in self.schedulers.values():
                    sched.step()
                losses, stop = synchronise(losses, runtime, self._signal)
                self._check_finite(losses, guard)
                done += 1
                ips = done * self.source.batch_size / max(time.perf_counter() - start, 1e-9)
                bar.update(1)
                bar.set_postfix({**{k: f"{v:.3f}" for k, v in losses.items()}, "img/s": f"{ips:.1f}"})
                last = self.iteration == self.iterations
                if self.iteration % self.log_every == 0 or last or stop:
                    lr = next(iter(self.stage.optimizers.values())).param_groups[0]["lr"]
                    self._log({"iteration": self.iteration, **losses, "lr": lr, "images_per_s": ips})
                    if not interactive and runtime.is_main:
                        scalars = " ".join(f"{k}={v:.4f}" for k, v in losses.items())
                        print(f"[{self.stage.name}] {self.iteration}/{self.iterations} {scalars} lr={lr:.3g} "
                              f"img/s={ips:.1f}", flush=True)
                validation_due = bool(self.val_every) and self.iteration % self.val_every == 0
                if stop and not last:
                    self.pending_validation = validation_due  # done first thing on resume
                    self._save_state()
                    self._stopped(stop)
                if validation_due:
                    self._validate()
                if self.iteration % self.checkpoint_every == 0 or last:
                    self._save_state()
        finally:
            bar.close()
            if guard is not None:
                guard.remove()

    def _check_finite(self, losses: Mapping[str, float], guard: NonFiniteGuard | None) -> None:
        """Stop (:class:`NonFiniteLossError`) on a NaN or infinite loss term, or, while fewer than
        ``max_nonfinite_skips`` were skipped, report the skipped step in one line and go on.

        Losses are the synchronised ones and gradients all-reduced, so every rank decides alike.
        The guard also counts a step whose gradients alone were not finite.
        """
        bad = _nonfinite(losses)
        skipped = guard.skipped if guard is not None else []
        if not bad and not skipped:
            return
        terms = ", ".join(f"{k}={v}" for k, v in bad.items()) or "non-finite gradients"
        where = f"{self.stage.name}: non-finite loss at iteration {self.iteration}/{self.iterations} ({terms})"
        if self.nonfinite_skips >= self.max_nonfinite_skips:
            raise NonFiniteLossError(
                f"{where}; training stopped (train.max_nonfinite_skips: {self.max_nonfinite_skips}, "
                f"steps skipped before: {self.nonfinite_skips}); nothing of this iteration was saved")
        self.nonfinite_skips += 1
        steps = f"optimizer step of {', '.join(skipped)} skipped" if skipped else \
            "gradients were finite, optimizer steps taken"
        if self.stage.runtime.is_main:
            print(f"[{self.stage.name}] {where}: {steps} ({self.nonfinite_skips}/"
                  f"{self.max_nonfinite_skips} skips used)", file=sys.stderr, flush=True)

    def _stopped(self, signum: int) -> None:
        message = (f"{self.stage.name}: stopped by {signal.Signals(signum).name} at iteration "
                   f"{self.iteration}/{self.iterations}; resume checkpoint {self.state_dir / STATE_FILE} "
                   f"written; rerun to resume")
        if self.stage.runtime.is_main:
            print(message, file=sys.stderr, flush=True)
        raise Preempted(signum, message)

    @contextlib.contextmanager
    def _catch_stop_signals(self) -> Iterator[None]:
        """Record SIGTERM/SIGINT instead of dying; the previous handlers are restored afterwards.

        The loop stops after the iteration in progress. Repeats are ignored (torchrun forwards the
        signal its workers already got), except that a third one restores the previous handlers
        and acts as they would (an escape from a hung run). A forked DataLoader worker inherits the
        handler and ignores the signal; :func:`proda.runtime.shield_worker` keeps workers alive
        through a job-wide SIGTERM too.
        """
        self._signal = 0
        if threading.current_thread() is not threading.main_thread():  # signal.signal would fail
            yield
            return
        pid, count = os.getpid(), 0
        previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}

        def restore() -> None:
            for s, handler in previous.items():
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)

        def handler(signum: int, frame: Any) -> None:
            nonlocal count
            if os.getpid() != pid:  # a forked DataLoader worker
                return
            count += 1
            self._signal = self._signal or signum
            if count >= 3:
                restore()
                signal.raise_signal(signum)

        for s in STOP_SIGNALS:
            signal.signal(s, handler)
        try:
            yield
        finally:
            restore()

    def _validate(self) -> None:
        miou = float(self.validate(unwrap(self.stage.student)))
        print(f"[{self.stage.name}] iteration {self.iteration}: target val mIoU {miou:.2f}", flush=True)
        if self.select == "best_on_val" and miou >= self.best_iou:
            self.best_iou = miou
            self.best_state = {k: v.detach().cpu().clone() for k, v in unwrap(self.stage.student).state_dict().items()}

    def discard_state(self) -> None:
        """Remove the resume checkpoints once the final model is exported (the scalar log stays)."""
        if self.stage.runtime.is_main:
            for name in (STATE_FILE, PREVIOUS_FILE):
                (self.state_dir / name).unlink(missing_ok=True)

    def final_student_state(self) -> dict[str, torch.Tensor]:
        """The exported weights: the last ones, or the best on target val when so selected."""
        if self.select == "best_on_val" and self.best_state is not None:
            return self.best_state
        return unwrap(self.stage.student).state_dict()


def _every_rank(flag: bool, runtime: Runtime) -> bool:
    """Whether ``flag`` holds on every rank (one all-reduce under DDP)."""
    if not runtime.distributed:
        return flag
    value = torch.tensor([float(flag)], device=runtime.device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item() > 0)
