"""Dataset checks before any training: every label of every split a run reads, read once.

A label id outside the dataset's table or a label of another size than its image would otherwise
stop a run only when a step first reads that file, possibly after hours of training. The workflow
runs :func:`check_splits` as its own step (``check_data``), before the warm-up, and keeps its
report, so a second run does not pay for it again.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from tqdm import tqdm

from proda.data import build_dataset
from proda.data.base import SegmentationDataset


def check_labels(dataset: SegmentationDataset, threads: int = 1, what: str = "labels") -> int:
    """Read every label of ``dataset`` (ids and size, :meth:`SegmentationDataset.check_label`) with
    ``threads`` threads (PNG decoding releases the GIL); the first bad file raises its one-line
    DatasetError. Returns how many labels were checked."""
    labelled = [i for i, sample in enumerate(dataset.samples) if sample.label is not None]
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for _ in tqdm(pool.map(dataset.check_label, labelled), total=len(labelled), desc=what, unit="label"):
            pass
    return len(labelled)


def check_splits(data: dict[str, Any], splits: Sequence[tuple[str, str, bool]], threads: int = 1) -> list[dict]:
    """Check each ``(side, split, labels)`` of the ``data`` config section (``side``: source or
    target); one report row per split: where, how many images and labels, how long it took."""
    rows = []
    for side, split, labels in splits:
        spec = data[side]
        start = time.perf_counter()
        dataset = build_dataset(spec["dataset"], spec["root"], split=split, n_class=data["n_class"], labels=labels)
        checked = check_labels(dataset, threads, f"{side} {split}") if labels else 0
        rows.append({"side": side, "dataset": spec["dataset"], "root": str(spec["root"]), "split": split,
                     "images": len(dataset), "labels_checked": checked,
                     "seconds": round(time.perf_counter() - start, 2)})
    return rows
