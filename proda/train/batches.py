"""Resumable, rank-aware batch streams over the training datasets."""
from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from proda.runtime import shield_worker


class BatchStream:
    """An endless iterator of batches, epoch after epoch, whose position can be saved and restored.

    Each epoch's order is a permutation drawn from ``(seed, epoch)`` alone, so a resumed run sees
    exactly the batches an uninterrupted run would have seen. ``batch_size`` is the global batch; under
    torchrun every rank takes its contiguous slice of each global batch (like DataParallel's scatter).
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, shuffle: bool = True, drop_last: bool = True,
                 seed: int = 0, num_workers: int = 0, collate: Callable | None = None,
                 rank: int = 0, world_size: int = 1, pin_memory: bool = False):
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} is not divisible by the {world_size} processes")
        n = len(dataset)
        if n == 0 or (drop_last and n < batch_size):
            raise ValueError(f"dataset of {n} images cannot fill one batch of {batch_size}")
        self.dataset, self.batch_size, self.shuffle, self.drop_last = dataset, batch_size, shuffle, drop_last
        self.seed, self.num_workers, self.collate, self.pin_memory = seed, num_workers, collate, pin_memory
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0
        self._it: Iterator | None = None

    def batches_per_epoch(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        n = len(self.dataset)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch)).tolist()
        else:
            order = list(range(n))
        per_rank = self.batch_size // self.world_size
        batches = [order[i:i + self.batch_size] for i in range(0, self.batches_per_epoch() * self.batch_size,
                                                                self.batch_size)]
        return [b[self.rank * per_rank:(self.rank + 1) * per_rank] for b in batches]

    def _start(self) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        batches = self._epoch_batches(self.epoch)[self.position:]
        # a private generator: creating the iterator must not consume the global torch RNG,
        # or a resumed run would draw different dropout masks than an uninterrupted one
        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers,
                            collate_fn=self.collate, pin_memory=self.pin_memory, worker_init_fn=shield_worker,
                            generator=torch.Generator().manual_seed(self.seed + self.epoch))
        self._it = iter(loader)

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> Any:
        if self._it is None:
            self._start()
        try:
            batch = next(self._it)
        except StopIteration:
            self.epoch, self.position = self.epoch + 1, 0
            self._start()
            batch = next(self._it)
        self.position += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._it = None
