"""What `check_data` (every label of every split a run reads, before any training) costs at the
paper's sizes: seconds per label on generated real-layout files of the real sizes, and the
extrapolation to the full GTA5 (24,966 labels, 1914x1052) + Cityscapes (2,975 train + 500 val,
2048x1024) check with a given number of threads.

    .venv/bin/python benchmarks/data_check.py [--images 8] [--threads 1 2]

Real labels are larger PNGs than the toy generator's (more edges), so the per-label time here is
a lower bound of the decode time; the extrapolation says so.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proda.data import build_dataset  # noqa: E402
from proda.data.checks import check_labels  # noqa: E402
from proda.data.toycity import generate  # noqa: E402

FULL = {"gta5": 24966, "cityscapes": 2975 + 500}
SIZES = {"gta5": (1914, 1052), "cityscapes": (2048, 1024)}


def seconds_per_label(root: Path, threads: int) -> dict[str, float]:
    """Wall seconds per checked label of each generated dataset, with ``threads`` threads."""
    out = {}
    for kind, split in (("gta5", "train"), ("cityscapes", "val")):
        dataset = build_dataset(kind, root / kind, split=split)
        start = time.perf_counter()
        n = check_labels(dataset, threads, f"{kind} ({threads} threads)")
        out[kind] = (time.perf_counter() - start) / n
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8, help="generated images per split")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        generate(root, n_source=args.images, n_target_train=2, n_target_val=args.images,
                 source_size=SIZES["gta5"], target_size=SIZES["cityscapes"])
        print("| threads | GTA5 s/label | Cityscapes s/label | full GTA5 + Cityscapes check |")
        print("|---|---|---|---|")
        for threads in args.threads:
            rate = seconds_per_label(root, threads)
            total = sum(FULL[k] * rate[k] for k in FULL)
            print(f"| {threads} | {rate['gta5']:.3f} | {rate['cityscapes']:.3f} | {total / 60:.1f} min |")


if __name__ == "__main__":
    main()
