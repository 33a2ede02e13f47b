"""Per-stage evaluation CSVs → ``summary.csv`` (stage × class table) and two plots; and the
evidence that the method works: seed statistics, the source-only/oracle bounds, ablations,
prediction grids, training curves and the figure captions of the HTML report.

``proda report --out-dir D warmup=eval/warmup.csv stage1=eval/stage1.csv ...``
"""
from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from proda.files import atomic_path
from proda.integrity import damaged, one_line
from proda.metrics import SUMMARY_KEYS

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.data import Dataset

PathLike = str | os.PathLike
MIOU_KEYS = ("mIoU", "mIoU-16", "mIoU-13")
_PERCENT_SLACK = 1e-6  # rounding of 100 * a fraction that is 1


def _check_percent(path: Path, line: int, value: float) -> float:
    """``value`` if NaN or a percentage in [0, 100]; else the file is damaged."""
    if math.isnan(value) or -_PERCENT_SLACK <= value <= 100 + _PERCENT_SLACK:
        return value
    raise damaged(path, f"line {line}: {value!r} is not a percentage", "evaluation CSV")


def read_eval_csv(path: PathLike) -> dict[str, float]:
    """``{class or summary key: percent}`` in file order; empty cells are NaN.

    A file that is not UTF-8 CSV text or holds a value outside [0, 100] raises a one-line
    :class:`~proda.integrity.DamagedArtifactError` naming it; a wrong layout a ``ValueError``.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except OSError as err:
        raise ValueError(f"cannot read evaluation CSV {path}: {err.strerror}") from None
    except (UnicodeDecodeError, csv.Error) as err:
        raise damaged(path, f"not CSV text: {one_line(err)}", "evaluation CSV") from None
    if not rows or rows[0] != ["class", "iou"]:
        raise ValueError(f"evaluation CSV {path} must start with the header 'class,iou'")
    out: dict[str, float] = {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != 2 or row[0] in out:
            raise ValueError(f"evaluation CSV {path} line {line}: expected a new 'key,value' row")
        try:
            value = float(row[1]) if row[1] else math.nan
        except ValueError:
            raise ValueError(f"evaluation CSV {path} line {line}: bad number {row[1]!r}") from None
        out[row[0]] = _check_percent(path, line, value)
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


def save_figure(fig: Figure, path: PathLike) -> Path:
    """Write ``fig`` as a PNG (100 dpi) atomically; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


_save_figure = save_figure  # the former private name


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


def read_table(path: PathLike, what: str, **kwargs) -> pd.DataFrame:
    """``pd.read_csv(path, **kwargs)``; a file that is not UTF-8 CSV text (random bytes) raises a
    one-line :class:`~proda.integrity.DamagedArtifactError` naming it and ``what`` it is."""
    try:
        return pd.read_csv(path, encoding="utf-8", **kwargs)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        raise
    except OSError as err:
        raise ValueError(f"cannot read {what} {path}: {err.strerror or one_line(err)}") from None
    except (UnicodeDecodeError, pd.errors.ParserError, csv.Error, ValueError) as err:
        raise damaged(path, f"not CSV text: {one_line(err)}", what) from None


def _numeric(table: pd.DataFrame, path: PathLike, what: str) -> pd.DataFrame:
    """``table`` with every column numeric (int columns stay int); a non-number cell means a
    damaged file."""
    try:
        return table.apply(pd.to_numeric)
    except (TypeError, ValueError) as err:
        raise damaged(path, f"a cell is not a number: {one_line(err)}", what) from None


def read_summary(path: PathLike) -> pd.DataFrame:
    """A ``summary.csv`` (stage × class IoU + mIoU, percent) back as a float table."""
    table = read_table(path, "summary table", index_col=0)
    if "mIoU" not in table.columns:
        raise ValueError(f"{path} is not a summary table (no mIoU column)")
    return _numeric(table, path, "summary table")


def format_summary(summary_csv: PathLike) -> str:
    """A compact text table of target mIoU per stage (and its change from the first stage)."""
    table = read_summary(summary_csv)
    cols = [c for c in ("mIoU", "mIoU-13") if c in table.columns]
    lines = ["stage      " + "  ".join(f"{c:>8}" for c in cols) + "   vs first"]
    first = table[cols[0]].iloc[0]
    for stage, row in table.iterrows():
        cells = "  ".join(f"{row[c]:8.2f}" for c in cols)
        lines.append(f"{stage:<10} {cells}   {row[cols[0]] - first:+7.2f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- captions
#: One caption per figure / table file of the report (used by the workflow's HTML report).
CAPTIONS: dict[str, str] = {
    "summary.csv": "Target-val IoU (%) per class and mIoU of every stage of one run.",
    "miou_by_stage.png": "Target-val mIoU (%) of every stage of one run.",
    "per_class_iou.png": "Per-class target-val IoU (%) of every stage; blank cells are classes "
                         "absent from both the ground truth and the predictions.",
    "seed_summary.csv": "Target-val mIoU and per-class IoU (%) per stage as mean and sample "
                        "standard deviation (ddof=1) over the training seeds, with each seed's mIoU.",
    "seed_summary.png": "Target-val mIoU (%) per stage: mean over seeds with ±1 standard "
                        "deviation error bars; the dots are the individual seeds.",
    "bounds.csv": "Each stage against the bounds: its gain over the source-only model and, where "
                  "target labels allow an oracle, the share (%) of the source-only-to-oracle gap "
                  "it closes, computed per seed and then averaged (mean ± std).",
    "ablations.csv": "Ablations in the style of the paper's Table 3: target-val mIoU (%) of each "
                     "variant (mean ± std over seeds) and its difference to the full method's "
                     "stage it ablates.",
    "label_quality.csv": "Quality of every pseudo-label artifact on the target-train images against "
                         "their ground truth: mIoU and pixel accuracy (%) over the pixels the label "
                         "keeps, and the kept share (%) of the labelled pixels.",
    "label_quality.png": "Pseudo-label quality per artifact: mIoU and pixel accuracy over the kept "
                         "pixels and the kept share of the labelled pixels (%); denoising should "
                         "raise the first two, thresholding trades the third for them.",
    "prediction_grid.png": "Target-val images (rows, evenly spaced through the split) with their "
                           "ground truth and every stage's prediction in the Cityscapes palette "
                           "(black: ignored); each prediction is labelled with its per-image mIoU.",
    "training_curves.png": "Training losses per iteration of every trained stage (faint: raw, "
                           "solid: moving average) with the learning rate on the right axis.",
}


# ----------------------------------------------------------------------------- statistics
def _mean_std(values: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NaN-aware mean, sample std (ddof=1; NaN below two values) and count along ``axis``."""
    values = np.asarray(values, dtype=float)
    ok = ~np.isnan(values)
    n = ok.sum(axis=axis)
    filled = np.where(ok, values, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = filled.sum(axis=axis) / n
        dev = np.where(ok, values - np.expand_dims(mean, axis), 0.0)
        std = np.sqrt((dev ** 2).sum(axis=axis) / (n - 1))
    return mean, np.where(n > 1, std, np.nan), n


def _union(groups: Iterable[Iterable[str]]) -> list[str]:
    """Every item of ``groups`` once, in order of first appearance."""
    return list(dict.fromkeys(item for group in groups for item in group))


def seed_table(tables: Mapping[int, pd.DataFrame]) -> pd.DataFrame:
    """Per-seed :func:`summary_table` s → stage × (metric, statistic) table.

    Columns (a two-level MultiIndex ``metric``/``statistic``): ``("n_seeds", "")`` (seeds with an
    mIoU), then for each mIoU variant ``mean``, ``std`` and ``seed<k>`` per seed, then ``mean`` and
    ``std`` per class. Statistics are NaN-aware (a stage or class missing in a seed is skipped);
    ``std`` has ddof=1 and is NaN below two values. Stages and classes keep their first order.
    """
    if not tables:
        raise ValueError("no per-seed summary tables given")
    seeds = sorted(int(s) for s in tables)
    frames = {int(s): t for s, t in tables.items()}
    stages = _union(t.index for t in frames.values())
    columns = _union(t.columns for t in frames.values())
    mious = [k for k in MIOU_KEYS if k in columns]
    if "mIoU" not in mious:
        raise ValueError("the per-seed summary tables have no mIoU column")
    classes = [c for c in columns if c not in MIOU_KEYS]
    order = mious + classes
    cube = np.stack([frames[s].reindex(index=stages, columns=order).to_numpy(dtype=float)
                     for s in seeds])  # seeds × stages × columns
    mean, std, n = _mean_std(cube, axis=0)
    data: dict[tuple[str, str], np.ndarray] = {("n_seeds", ""): n[:, 0]}
    for j, key in enumerate(order):
        data[(key, "mean")], data[(key, "std")] = mean[:, j], std[:, j]
        if key in mious:
            data.update({(key, f"seed{s}"): cube[i, :, j] for i, s in enumerate(seeds)})
    table = pd.DataFrame(data, index=pd.Index(stages, name="stage"))
    table.columns = pd.MultiIndex.from_tuples(list(data), names=["metric", "statistic"])
    return table


def flat_seed_table(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`seed_table` with flat column names ``<metric>_<statistic>`` (``n_seeds`` alone)."""
    flat = table.copy()
    flat.columns = ["_".join(p for p in col if p) for col in table.columns]
    return flat


def write_seed_summary(tables: Mapping[int, pd.DataFrame], out_csv: PathLike) -> Path:
    """``seed_summary.csv``: one row per stage, columns ``stage, n_seeds, mIoU_mean, mIoU_std,
    mIoU_seed<k>...`` (likewise mIoU-16 / mIoU-13 when present), then ``<class>_mean,
    <class>_std`` per class. Written atomically; returns the path."""
    path = Path(out_csv)
    with atomic_path(path) as tmp:
        flat_seed_table(seed_table(tables)).to_csv(tmp)
    return path


def read_seed_summary(path: PathLike) -> pd.DataFrame:
    """A ``seed_summary.csv`` back as a flat stage-indexed table."""
    table = read_table(path, "seed summary", index_col=0)
    if table.index.name != "stage" or "mIoU_mean" not in table.columns:
        raise ValueError(f"{path} is not a seed summary (no stage index and mIoU_mean column)")
    return _numeric(table, path, "seed summary")


def _per_seed(table: pd.DataFrame | PathLike, metric: str = "mIoU") -> pd.DataFrame:
    """Stage × seed (int columns, ascending) values of ``metric`` from either seed-table form."""
    if not isinstance(table, pd.DataFrame):
        table = read_seed_summary(table)
    if isinstance(table.columns, pd.MultiIndex):
        table = flat_seed_table(table)
    pattern = re.compile(rf"{re.escape(metric)}_seed(-?\d+)")
    cols = {int(m.group(1)): c for c in table.columns if (m := pattern.fullmatch(str(c)))}
    if not cols:
        raise ValueError(f"the seed summary has no per-seed {metric} columns ({metric}_seed<k>)")
    seeds = sorted(cols)
    out = table[[cols[s] for s in seeds]].astype(float)
    out.columns = seeds
    return out


def format_seed_summary(summary_csv: PathLike) -> str:
    """Console table: ``stage  mIoU mean ± std  (seed k: value, ...)``."""
    table = read_seed_summary(summary_csv)
    per_seed = _per_seed(table)
    width = max(10, *(len(str(s)) for s in table.index))
    lines = [f"{'stage':<{width}}  {'mIoU mean ± std':>17}  per seed"]
    for stage, row in table.iterrows():
        std = "  n/a" if math.isnan(row["mIoU_std"]) else f"{row['mIoU_std']:5.2f}"
        seeds = ", ".join(f"seed {s}: {v:.2f}" for s, v in per_seed.loc[stage].items()
                          if not math.isnan(v))
        lines.append(f"{stage:<{width}}  {row['mIoU_mean']:9.2f} ± {std}  ({seeds})")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- bounds
def _gap_closed(stage: np.ndarray, source_only: np.ndarray, oracle: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = 100.0 * (stage - source_only) / (oracle - source_only)
    return np.where(oracle > source_only, gap, np.nan)


def gap_closed(stage_miou: float, source_only: float, oracle: float) -> float:
    """Share (%) of the source-only-to-oracle mIoU gap a stage closes; NaN when
    ``oracle <= source_only`` (or any value is NaN)."""
    return float(_gap_closed(np.float64(stage_miou), np.float64(source_only), np.float64(oracle)))


def _bound_values(bound: Mapping[int, float] | float, seeds: Sequence[int], what: str) -> np.ndarray:
    """One bound value per seed (a single number applies to every seed)."""
    if not isinstance(bound, Mapping):
        return np.full(len(seeds), float(bound))
    values = {int(k): float(v) for k, v in bound.items()}
    if missing := [s for s in seeds if s not in values]:
        raise ValueError(f"{what} mIoU missing for seed(s) {missing} (given: {sorted(values)})")
    return np.array([values[s] for s in seeds])


def bounds_table(seed_summary: pd.DataFrame | PathLike, source_only: Mapping[int, float] | float,
                 oracle: Mapping[int, float] | float | None = None) -> pd.DataFrame:
    """Each stage against the source-only model (and the target oracle), per seed then aggregated.

    ``seed_summary``: a :func:`seed_table` (either column form) or a ``seed_summary.csv``;
    ``source_only`` / ``oracle``: mIoU (%) per seed (or one number for all seeds). Columns
    (stage-indexed): ``n_seeds, mIoU_mean, mIoU_std, source_only_mean, gain_mean, gain_std``
    (gain = stage − source-only) and, with an oracle, ``oracle_mean, gap_closed_mean,
    gap_closed_std`` (:func:`gap_closed` in %).
    """
    per_seed = _per_seed(seed_summary)
    seeds = list(per_seed.columns)
    stage = per_seed.to_numpy(dtype=float)  # stages × seeds
    low = _bound_values(source_only, seeds, "source-only")
    mean, std, n = _mean_std(stage, axis=1)
    gain_mean, gain_std, _ = _mean_std(stage - low, axis=1)
    data = {"n_seeds": n, "mIoU_mean": mean, "mIoU_std": std,
            "source_only_mean": np.full(len(stage), _mean_std(low, axis=0)[0]),
            "gain_mean": gain_mean, "gain_std": gain_std}
    if oracle is not None:
        high = _bound_values(oracle, seeds, "oracle")
        gap_mean, gap_std, _ = _mean_std(_gap_closed(stage, low, high), axis=1)
        data.update({"oracle_mean": np.full(len(stage), _mean_std(high, axis=0)[0]),
                     "gap_closed_mean": gap_mean, "gap_closed_std": gap_std})
    return pd.DataFrame(data, index=pd.Index(per_seed.index, name="stage"))


def write_bounds(seed_summary: pd.DataFrame | PathLike, source_only: Mapping[int, float] | float,
                 oracle: Mapping[int, float] | float | None, out_csv: PathLike) -> Path:
    """``bounds.csv`` (:func:`bounds_table`), written atomically; returns the path."""
    path = Path(out_csv)
    table = bounds_table(seed_summary, source_only, oracle)
    with atomic_path(path) as tmp:
        table.to_csv(tmp)
    return path


# ----------------------------------------------------------------------------- ablations
FULL_METHOD = "full method"
ABLATION_COLUMNS = ("name", "stage", "n_seeds", "mIoU_mean", "mIoU_std", "delta_vs_full", "per_seed")


def ablation_table(full: Mapping[str, Sequence[float]],
                   ablations: Mapping[str, tuple[str, Sequence[float]]]) -> pd.DataFrame:
    """The paper's ablation layout: per stage of ``full`` a ``full method`` row, then every
    ablation of that stage (in the given order).

    ``full``: stage → per-seed mIoUs of the full method; ``ablations``: name → (stage it ablates,
    per-seed mIoUs). Columns: :data:`ABLATION_COLUMNS` (``delta_vs_full`` = mean − the full
    stage's mean; ``per_seed`` the values joined by ``;``). Raises for an ablation of a stage
    missing from ``full``.
    """
    if missing := sorted({stage for stage, _ in ablations.values()} - set(full)):
        raise ValueError(f"ablations of stage(s) {missing} without a full-method result "
                         f"(full method stages: {list(full)})")
    rows: list[tuple[str, str, Sequence[float]]] = []
    for stage, values in full.items():
        rows.append((FULL_METHOD, stage, values))
        rows += [(name, stage, vals) for name, (of, vals) in ablations.items() if of == stage]
    width = max(len(v) for _, _, v in rows)
    padded = np.full((len(rows), max(width, 1)), np.nan)
    for i, (_, _, values) in enumerate(rows):
        padded[i, :len(values)] = np.asarray(values, dtype=float)
    mean, std, n = _mean_std(padded, axis=1)
    full_mean = {stage: m for (name, stage, _), m in zip(rows, mean) if name == FULL_METHOD}
    return pd.DataFrame({
        "name": [r[0] for r in rows], "stage": [r[1] for r in rows], "n_seeds": n,
        "mIoU_mean": mean, "mIoU_std": std,
        "delta_vs_full": mean - np.array([full_mean[r[1]] for r in rows]),
        "per_seed": [";".join(f"{float(v):.6g}" for v in r[2]) for r in rows],
    }, columns=list(ABLATION_COLUMNS))


def write_ablations(full: Mapping[str, Sequence[float]],
                    ablations: Mapping[str, tuple[str, Sequence[float]]], out_csv: PathLike) -> Path:
    """``ablations.csv`` (:func:`ablation_table`, no index column), written atomically."""
    path = Path(out_csv)
    table = ablation_table(full, ablations)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return path


# ----------------------------------------------------------------------------- figures
def plot_seed_summary(summary_csv: PathLike, path: PathLike) -> Path:
    """mIoU per stage: bars at the mean with ±std error bars, and each seed as a dot."""
    table = read_seed_summary(summary_csv)
    per_seed = _per_seed(table)
    fig = Figure(figsize=(min(13.0, 3.5 + 1.1 * len(table)), 3.8), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(table))
    mean = table["mIoU_mean"].to_numpy(dtype=float)
    std = np.nan_to_num(table["mIoU_std"].to_numpy(dtype=float))
    bars = ax.bar(x, mean, 0.6, yerr=std, capsize=5, color="C0", alpha=0.6, label="mean ± std")
    ax.bar_label(bars, labels=[f"{m:.1f}" for m in mean], fontsize=8, padding=6)
    values = per_seed.to_numpy(dtype=float)  # stages × seeds
    offsets = np.linspace(-0.18, 0.18, values.shape[1]) if values.shape[1] > 1 else np.zeros(1)
    for j, seed in enumerate(per_seed.columns):
        ax.scatter(x + offsets[j], values[:, j], s=18, zorder=3, label=f"seed {seed}")
    ax.set_xticks(x, list(table.index))
    ax.set_ylabel("mIoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Target mIoU by stage over {values.shape[1]} seed(s)")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper", fontsize=7)
    return save_figure(fig, path)


def _colour(label: np.ndarray, n_class: int) -> np.ndarray:
    """Cityscapes palette; ignored / out-of-range pixels black."""
    from proda.data.labels import colorize

    label = np.asarray(label)
    rgb = colorize(label, n_class)
    rgb[(label < 0) | (label >= n_class)] = 0
    return rgb


def plot_prediction_grid(dataset: Dataset, models: Mapping[str, nn.Module], n: int,
                         path: PathLike, n_class: int, *, device: str = "cpu") -> Path:
    """Grid of ``n`` evenly spaced images of ``dataset`` (rows) × [image, ground truth, the
    prediction of each model] in the Cityscapes palette (ignored pixels black).

    Predictions are :func:`proda.evaluate.predict` (eval mode, logits upsampled to the label
    size); each is labelled with its per-image mIoU. Models are moved to ``device``.
    """
    import torch
    from matplotlib.patches import Patch

    from proda.data.labels import class_names, palette
    from proda.evaluate import predict
    from proda.metrics import confusion_matrix, iou_table
    from proda.runtime import resolve_device

    if n < 1 or len(dataset) == 0:
        raise ValueError(f"plot_prediction_grid needs n >= 1 and a non-empty dataset (n={n})")
    dev = resolve_device(device)
    index = np.unique(np.linspace(0, len(dataset) - 1, num=min(n, len(dataset))).round().astype(int))
    items = [dataset[int(i)] for i in index]
    columns = ["image", "ground truth", *models]
    h, w = items[0]["label"].shape[-2:]
    cell = 3.0
    fig = Figure(figsize=(cell * len(columns), cell * h / w * len(items) + 1.4), layout="constrained")
    axes = fig.subplots(len(items), len(columns), squeeze=False)
    for model in models.values():
        model.to(dev)
    for r, item in enumerate(items):
        label = item["label"]
        img = item["img"].permute(1, 2, 0).clamp(0, 1).cpu().numpy()
        cells = [(img, ""), (_colour(label.numpy(), n_class), "")]
        for model in models.values():
            pred = predict(model, item["img"][None].to(dev, torch.float32), size=label.shape[-2:])
            pred = pred[0].cpu()
            miou = iou_table(confusion_matrix(pred, label, n_class)).miou
            cells.append((_colour(pred.numpy(), n_class), f"mIoU {100 * miou:.1f}"))
        for c, (picture, note) in enumerate(cells):
            ax = axes[r, c]
            ax.imshow(picture, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(note, fontsize=8)
            if r == 0:
                ax.set_title(columns[c], fontsize=10)
        axes[r, 0].set_ylabel(Path(str(item["name"])).stem.removesuffix("_leftImg8bit"), fontsize=7)
    colours = palette(n_class) / 255.0
    handles = [Patch(color=colours[k], label=name) for k, name in enumerate(class_names(n_class))]
    handles.append(Patch(color="black", label="ignored"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(10, len(handles)), fontsize=7)
    fig.suptitle(f"Predictions on {len(items)} target images")
    return save_figure(fig, path)


NON_LOSS_COLUMNS = ("iteration", "lr", "images_per_s")


def _read_train_log(path: PathLike) -> pd.DataFrame:
    """A ``train.csv`` as numbers (empty frame for a header-only or empty file)."""
    try:
        log = read_table(path, "training log")
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    return log.apply(pd.to_numeric, errors="coerce")


def plot_training_curves(train_csvs: Mapping[str, PathLike], path: PathLike) -> Path:
    """One panel per stage: every loss column against the iteration (faint raw values, a moving
    average on top) and the learning rate on a second axis. A log without rows (an imported
    warm-up) shows "imported, not trained"."""
    if not train_csvs:
        raise ValueError("no training logs given")
    fig = Figure(figsize=(9.0, 1.0 + 2.6 * len(train_csvs)), layout="constrained")
    axes = fig.subplots(len(train_csvs), 1, squeeze=False)[:, 0]
    for ax, (stage, csv_path) in zip(axes, train_csvs.items()):
        log = _read_train_log(csv_path)
        ax.set_title(stage, fontsize=10)
        if log.empty or "iteration" not in log.columns:
            ax.text(0.5, 0.5, "imported, not trained", transform=ax.transAxes, ha="center",
                    va="center", fontsize=11, color="grey")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        it = log["iteration"].to_numpy()
        window = max(1, len(log) // 50)
        for k, col in enumerate(c for c in log.columns if c not in NON_LOSS_COLUMNS):
            colour = f"C{k % 10}"
            if window > 1:
                ax.plot(it, log[col].to_numpy(), color=colour, alpha=0.25, linewidth=0.6)
            smooth = log[col].rolling(window, min_periods=1).mean().to_numpy()
            ax.plot(it, smooth, color=colour, linewidth=1.2, label=col)
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        if "lr" in log.columns:
            lr_ax = ax.twinx()
            lr_ax.plot(it, log["lr"].to_numpy(), color="black", linestyle="--", linewidth=1,
                       label="lr")
            lr_ax.set_ylabel("learning rate")
            lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
            handles = ax.get_legend_handles_labels()[0] + lr_ax.get_legend_handles_labels()[0]
        else:
            handles = ax.get_legend_handles_labels()[0]
        if handles:
            ax.legend(handles=handles, fontsize=7, loc="upper right", ncol=min(4, len(handles)))
    fig.suptitle("Training curves")
    return save_figure(fig, path)
