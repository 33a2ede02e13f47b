"""Per-stage evaluation CSVs → ``summary.csv`` (stage × class table) and two plots.

``proda report --out-dir D warmup=eval/warmup.csv stage1=eval/stage1.csv ...``
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from proda.files import atomic_path
from proda.metrics import SUMMARY_KEYS

PathLike = str | os.PathLike
MIOU_KEYS = ("mIoU", "mIoU-16", "mIoU-13")


def read_eval_csv(path: PathLike) -> dict[str, float]:
    """``{class or summary key: percent}`` in file order; empty cells are NaN."""
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
    except OSError as err:
        raise ValueError(f"cannot read evaluation CSV {path}: {err.strerror}") from None
    if not rows or rows[0] != ["class", "iou"]:
        raise ValueError(f"evaluation CSV {path} must start with the header 'class,iou'")
    out: dict[str, float] = {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != 2 or row[0] in out:
            raise ValueError(f"evaluation CSV {path} line {line}: expected a new 'key,value' row")
        try:
            out[row[0]] = float(row[1]) if row[1] else math.nan
        except ValueError:
            raise ValueError(f"evaluation CSV {path} line {line}: bad number {row[1]!r}") from None
    if "mIoU" not in out:
        raise ValueError(f"evaluation CSV {path} has no mIoU row")
    return out


def summary_table(eval_csvs: Mapping[str, PathLike]) -> pd.DataFrame:
    """Stages (in the given order) × class IoUs + mIoU (+ mIoU-16 / mIoU-13 when present)."""
    if not eval_csvs:
        raise ValueError("no evaluation CSVs given")
    scores = {stage: read_eval_csv(path) for stage, path in eval_csvs.items()}
    classes: list[str] = []
    for values in scores.values():
        classes += [k for k in values if k not in SUMMARY_KEYS and k not in classes]
    mious = [k for k in MIOU_KEYS if any(k in v for v in scores.values())]
    table = pd.DataFrame.from_dict(scores, orient="index").reindex(columns=classes + mious)
    table.index.name = "stage"
    return table.astype(float)


def _save_figure(fig: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def plot_miou(table: pd.DataFrame, path: Path) -> None:
    """Grouped bars: one group per stage, one bar per mIoU variant, values on top.

    ``mIoU-16`` is left out: it always equals ``mIoU`` of the 16-class run."""
    keys = [k for k in ("mIoU", "mIoU-13") if k in table.columns]
    width_in = min(12.0, 2.0 + 0.9 * len(table) * len(keys))
    fig = Figure(figsize=(width_in, 3.5), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(table))
    width = 0.8 / len(keys)
    for i, key in enumerate(keys):
        bars = ax.bar(x + (i - (len(keys) - 1) / 2) * width, table[key].to_numpy(), width, label=key)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks(x, list(table.index))
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title("mIoU by stage")
    ax.legend(loc="upper left", fontsize=8)
    _save_figure(fig, path)


def plot_per_class(table: pd.DataFrame, path: Path) -> None:
    """Heatmap stage × class (IoU %, NaN blank) with the value in each cell."""
    values = table.to_numpy(dtype=float)
    fig = Figure(figsize=(2 + 0.6 * table.shape[1], 1.5 + 0.5 * len(table)), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for (r, c), v in np.ndenumerate(values):
        if not math.isnan(v):
            ax.text(c, r, f"{v:.1f}", ha="center", va="center", fontsize=7,
                    color="black" if v > 60 else "white")
    n_scores = sum(k in table.columns for k in MIOU_KEYS)
    if 0 < n_scores < table.shape[1]:  # separate the class columns from the mIoU columns
        ax.axvline(table.shape[1] - n_scores - 0.5, color="white", linewidth=3)
    ax.set_xticks(np.arange(table.shape[1]), list(table.columns), rotation=60, ha="right")
    ax.set_yticks(np.arange(len(table)), list(table.index))
    ax.set_title("Per-class IoU (%)")
    fig.colorbar(image, ax=ax, fraction=0.03)
    _save_figure(fig, path)


def write_report(eval_csvs: Mapping[str, PathLike], out_dir: PathLike) -> dict[str, Path]:
    """Write ``summary.csv``, ``miou_by_stage.png`` and ``per_class_iou.png`` atomically."""
    return write_summary(summary_table(eval_csvs), out_dir)


def write_summary(table: pd.DataFrame, out_dir: PathLike) -> dict[str, Path]:
    """Write a :func:`summary_table` and its two plots into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"summary": out / "summary.csv", "miou": out / "miou_by_stage.png",
             "per_class": out / "per_class_iou.png"}
    with atomic_path(paths["summary"]) as tmp:
        table.to_csv(tmp)
    plot_miou(table, paths["miou"])
    plot_per_class(table, paths["per_class"])
    return paths


def format_summary(summary_csv: PathLike) -> str:
    """A compact text table of target mIoU per stage (and its change from the first stage)."""
    table = pd.read_csv(summary_csv, index_col=0)
    cols = [c for c in ("mIoU", "mIoU-13") if c in table.columns]
    lines = ["stage      " + "  ".join(f"{c:>8}" for c in cols) + "   vs first"]
    first = table[cols[0]].iloc[0]
    for stage, row in table.iterrows():
        cells = "  ".join(f"{row[c]:8.2f}" for c in cols)
        lines.append(f"{stage:<10} {cells}   {row[cols[0]] - first:+7.2f}")
    return "\n".join(lines)
