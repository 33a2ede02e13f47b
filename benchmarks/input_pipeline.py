"""Training batches per second per CPU core at the paper's sizes, and the cores a GPU needs.

    .venv/bin/python benchmarks/input_pipeline.py                 # GTA5 preset sizes, PNG
    .venv/bin/python benchmarks/input_pipeline.py --format jpeg --items 6

What one DataLoader worker (one process, one torch thread, as torch sets in workers) does per item,
with the project's own code: ``proda.data.base.SegmentationDataset`` decodes an image file and its
label file (and resizes them to ``data.<domain>.size`` where that differs), then
``proda.data.training.TrainingDataset`` draws the RandomSized (base ``data.resize``) → crop
``data.crop`` → flip view, and for the target of stages 1-3 the strong view (RandAugment + cutout),
the full image (stage 1's teacher input) and the pseudo label in the weak view (stage 1: the soft
label, bilinear to the full image then cropped; stages 2/3: the hard label). The soft/hard labels
come from an in-memory store (the HDF5 read is not timed). Images are generated into a temporary
folder at the preset's sizes: a smooth random field plus noise (photo-like compressibility).

Per training iteration a stage loads one source batch and one target batch (``data.batch_size``
items each); ``cores = seconds of one worker per iteration / T`` for a GPU step of ``T`` seconds.
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np
import torch
from PIL import Image

# which views each stage's two streams load (source, target)
STAGE_VIEWS: dict[str, tuple[dict[str, bool], dict[str, bool]]] = {
    "warmup": ({}, {}),
    "stage1": ({}, {"strong": True, "full_image": True, "soft": True}),
    "stage2": ({}, {"strong": True, "hard": True}),
}


def photo_like(w: int, h: int, rng: np.random.RandomState) -> np.ndarray:
    """uint8 H×W×3: a smooth random field (bilinear from 1/32 size) plus pixel noise."""
    low = rng.randint(0, 256, (max(h // 32, 2), max(w // 32, 2), 3)).astype(np.uint8)
    field = np.asarray(Image.fromarray(low).resize((w, h), Image.Resampling.BILINEAR), dtype=np.int16)
    return np.clip(field + rng.randint(-12, 13, field.shape), 0, 255).astype(np.uint8)


def write_images(folder: Path, n: int, wh: tuple[int, int], fmt: str = "png", seed: int = 0) -> list:
    """``n`` image + label file pairs of size ``wh`` (W, H); returns :class:`proda.data.base.Sample`s."""
    from proda.data.base import Sample

    rng = np.random.RandomState(seed)
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(n):
        img = folder / f"{i:05d}.{'jpg' if fmt == 'jpeg' else 'png'}"
        lbl = folder / f"{i:05d}_label.png"
        Image.fromarray(photo_like(*wh, rng)).save(img, **({"quality": 90} if fmt == "jpeg" else {}))
        ids = np.repeat(np.repeat(rng.randint(7, 34, (wh[1] // 16 + 1, wh[0] // 16 + 1)), 16, 0), 16, 1)
        Image.fromarray(ids[:wh[1], :wh[0]].astype(np.uint8)).save(lbl)
        samples.append(Sample(img, lbl, img.name))
    return samples


class MemorySoft:
    """Soft labels ``C×h×w`` float16 at the model's output resolution of a W×H image."""

    def __init__(self, n_class: int, wh: tuple[int, int]):
        from proda.models import output_size

        self.q = torch.rand(n_class, output_size(wh[1]), output_size(wh[0])).half()

    def get(self, name: str) -> torch.Tensor:
        return self.q


class MemoryHard:
    def __init__(self, wh: tuple[int, int]):
        self.lp = np.random.RandomState(0).randint(0, 19, (wh[1], wh[0])).astype(np.uint8)

    def get(self, name: str) -> np.ndarray:
        return self.lp


def views(dataset: Any, cfg: Mapping[str, Any], wh: tuple[int, int], strong: bool = False, full_image: bool = False,
          soft: bool = False, hard: bool = False, seed: int = 0):
    from proda.data.training import TrainingDataset

    d = cfg["data"]
    return TrainingDataset(dataset, resize_base=d["resize"], crop_wh=tuple(d["crop"]),
                           scale_range=tuple(d["scale_range"]), hflip=d["hflip"], strong=strong,
                           full_image=full_image, soft_labels=MemorySoft(d["n_class"], wh) if soft else None,
                           hard_labels=MemoryHard(wh) if hard else None, seed=seed)


def seconds_per_item(ds: Any, repeats: int = 2) -> float:
    """Median seconds of ``ds[i]`` over every item, ``repeats`` epochs (new random views each)."""
    times = []
    for epoch in range(repeats):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            t0 = time.perf_counter()
            ds[i]
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(cfg: Mapping[str, Any], folder: Path, items: int = 4, fmt: str = "png", repeats: int = 2,
            say=print) -> dict[str, dict[str, float]]:
    """Per stage: seconds per source item, per target item, per iteration (one batch of each), and
    batches (iterations) per second per core."""
    from proda.data.base import SegmentationDataset
    from proda.data.labels import id_to_trainid_lut

    d = cfg["data"]
    src_wh, tgt_wh = tuple(d["source"]["size"]), tuple(d["target"]["size"])
    lut = id_to_trainid_lut("gta5", 19)
    src = SegmentationDataset(write_images(folder / "source", items, src_wh, fmt, 0), lut, 19, src_wh, folder)
    tgt = SegmentationDataset(write_images(folder / "target", items, tgt_wh, fmt, 1), lut, 19, tgt_wh, folder)
    out = {}
    for stage, (sv, tv) in STAGE_VIEWS.items():
        s = seconds_per_item(views(src, cfg, src_wh, **sv), repeats)
        t = seconds_per_item(views(tgt, cfg, tgt_wh, **tv), repeats)
        it = d["batch_size"] * (s + t)
        out[stage] = {"source_item_s": s, "target_item_s": t, "iteration_s": it, "batches_per_s_per_core": 1 / it}
        say(f"  {stage}: source item {s * 1e3:.0f} ms, target item {t * 1e3:.0f} ms -> "
            f"{1 / it:.3f} iterations / s per core")
    return out


def cores_needed(iteration_s: float, gpu_step_s: float) -> int:
    """Worker cores that keep a GPU of ``gpu_step_s`` per step fed (rounded up), plus one for the
    training process itself."""
    return int(np.ceil(iteration_s / gpu_step_s)) + 1


def main(argv: list[str] | None = None) -> int:
    from proda.config import resolve

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=str(REPO / "config" / "gta5_to_cityscapes.yaml"))
    p.add_argument("--format", choices=("png", "jpeg"), default="png")
    p.add_argument("--items", type=int, default=4, help="generated images per domain (default 4)")
    p.add_argument("--repeats", type=int, default=2, help="epochs over them (default 2)")
    p.add_argument("--gpu-step", type=float, nargs="*", default=[0.25, 0.5, 1.0, 2.0],
                   help="GPU seconds per stage step to size the cores for")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # as in a DataLoader worker
    cfg = resolve(args.preset, checks="schema")
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"input_pipeline.py: {Path(args.preset).name}, {args.format}, {args.items} images per domain, "
          f"{date}", flush=True)
    with tempfile.TemporaryDirectory(prefix="proda-input-") as tmp:
        res = measure(cfg, Path(tmp), args.items, args.format, args.repeats, say=lambda s: print(s, flush=True))
    print()
    head = " | ".join(f"cores at T={t:g} s" for t in args.gpu_step)
    print("| stage | source item (ms) | target item (ms) | s / iteration on 1 core | iterations / s per core | "
          f"{head} |")
    print("| --- | --- | --- | --- | --- |" + " --- |" * len(args.gpu_step))
    for stage, r in res.items():
        cores = " | ".join(str(cores_needed(r["iteration_s"], t)) for t in args.gpu_step)
        print(f"| {stage} | {r['source_item_s'] * 1e3:.0f} | {r['target_item_s'] * 1e3:.0f} | {r['iteration_s']:.2f} | "
              f"{r['batches_per_s_per_core']:.3f} | {cores} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
