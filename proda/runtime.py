"""Execution context shared by every step: device, seeding, mixed precision, torchrun/DDP."""
from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from proda.models.syncbn import convert_sync_batchnorm


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` → CUDA when available (the local rank's GPU under torchrun), else CPU; ``cuda``
    without an index → the local rank's GPU; anything else as ``torch.device`` reads it."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("config key 'device' is 'cuda' but no CUDA device is available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) like the official ``train.py``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def rng_state() -> dict[str, Any]:
    """Every global RNG state, for resumable training."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Runtime:
    """Where and how a step runs: device, precision, process rank and world size."""

    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on this device (CUDA or CPU) with ``precision: bf16``, else a no-op.

        Callers widen what leaves the block to float32 before upsampling or a loss."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def place(self, model: nn.Module) -> nn.Module:
        """``model`` on this device, in channels-last memory format when so configured (faster
        convolutions under bf16 on CPUs with AMX/AVX-512 and on tensor-core GPUs)."""
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def wrap(self, model: nn.Module) -> nn.Module:
        """DistributedDataParallel (with SyncBatchNorm) under torchrun, the model itself otherwise."""
        if not self.distributed:
            return model
        model = convert_sync_batchnorm(model, self.device)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def make_runtime(cfg: Mapping[str, Any]) -> Runtime:
    """Build the runtime from the config, joining the torchrun process group when there is one."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    device = resolve_device(str(cfg.get("device", "auto")))
    rank = 0
    if world > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank = dist.get_rank()
        if device.type == "cuda":
            torch.cuda.set_device(device)
    precision = "fp32" if cfg.get("parity") else str(cfg.get("precision", "fp32"))
    return Runtime(device=device, precision=precision, channels_last=bool(cfg.get("channels_last", False)),
                   rank=rank, world_size=world)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Inference: ``model`` in eval mode under ``torch.inference_mode`` for the block, its previous
    train/eval mode restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield model
    finally:
        model.train(was_training)



def shield_worker(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: the worker survives a SIGTERM/SIGINT sent to the whole job
    (SLURM signals every process of a job step, Ctrl-C the whole process group) and ends only on
    its parent's SIGTERM. Otherwise it dies of the signal and its loader raises in the main process
    at an arbitrary point, while the main process is finishing its iteration to write a resume
    checkpoint (:class:`proda.train.loop.Trainer`)."""
    import signal
    import threading

    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # delivered only to sigwaitinfo below
    parent = os.getppid()

    def wait() -> None:
        while True:
            info = signal.sigwaitinfo(stop)
            if info.si_signo == signal.SIGTERM and info.si_pid == parent:  # the loader shutting it down
                os._exit(0)

    threading.Thread(target=wait, name="proda-stop-signals", daemon=True).start()
