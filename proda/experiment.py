"""An experiment's own jobs, beside the registered steps (proda/steps.py): each reads the
artifacts of a whole run. Its manifest (what ``proda prune`` keeps), its report (evaluation CSVs,
summary table, plots), its figures, the quality of its pseudo labels and, over several seeds, the
study report. ``run_*`` maps one Snakemake rule's named inputs to its function, each input checked
against its record first.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Mapping

from proda import records
from proda.config import execution_settings, job_config
from proda.files import atomic_path
from proda.logs import logged_job
from proda.models import build_model
from proda.runtime import make_runtime
from proda.steps import rule_input
from proda.train.builders import target_dataset

PathLike = str | os.PathLike


def report(eval_csvs: Mapping[str, PathLike], out_dir: PathLike) -> None:
    """Summary CSV and plots over the per-stage evaluation CSVs."""
    from proda.report import write_report

    write_report(dict(eval_csvs), out_dir)


def experiment_report(eval_csvs: Mapping[str, PathLike], *, summary: PathLike, eval_dir: PathLike) -> None:
    """A run's own folder: a copy of each stage's evaluation CSV (``eval/<stage>.csv``) and the
    summary table and plots beside ``summary``."""
    Path(eval_dir).mkdir(parents=True, exist_ok=True)
    for stage, csv in eval_csvs.items():
        with atomic_path(Path(eval_dir) / f"{stage}.csv") as tmp:
            shutil.copyfile(csv, tmp)
    report({stage: Path(eval_dir) / f"{stage}.csv" for stage in eval_csvs}, Path(summary).parent)


def write_manifest(used: Mapping[str, Any], out: PathLike) -> None:
    """A run's ``manifest.yaml``: the run folders and artifacts it uses (``proda prune`` keeps them)."""
    import yaml

    with atomic_path(out) as tmp:
        tmp.write_text(yaml.safe_dump(dict(used), sort_keys=False))


# ---------------------------------------------------------------------------- evidence
def label_quality(cfg: Mapping[str, Any], *, warmup: PathLike, stage1: PathLike, soft: PathLike,
                  prototypes: PathLike, hard_stage1: PathLike, hard_stage2: PathLike, out_csv: PathLike,
                  plot: PathLike) -> None:
    """Every pseudo-label artifact against the target train labels (mIoU and pixel accuracy over the
    kept pixels, kept fraction): the warm-up's soft labels; the rectified labels stage 1 trains on,
    at its start (warm-up teacher, initial prototypes) and at its end (stage-1 model, final
    prototypes); the stage-1 and stage-2 hard labels at the stage-2 / stage-3 thresholds."""
    from proda.prototypes import load_prototypes
    from proda.pseudo_labels import HardLabelStore, SoftLabelStore
    from proda.quality import (checkpoint_prototypes, hard_label_quality, plot_quality, rectified_label_quality,
                               soft_label_quality, write_quality_csv)

    runtime = make_runtime(cfg)
    dataset, s1 = target_dataset(cfg, "train", labels=True), cfg["stage1"]
    store = SoftLabelStore(soft)
    rows = [{"artifact": "soft labels (warm-up)", **soft_label_quality(store, dataset)}]
    for name, ckpt, protos in (("rectified, stage-1 start", warmup, load_prototypes(prototypes)[0]),
                               ("rectified, stage-1 end", stage1, checkpoint_prototypes(stage1))):
        model = runtime.place(build_model(ckpt, allow_pickle=cfg["unsafe_pickle"])[0])
        with runtime.autocast():
            scores = rectified_label_quality(model, protos.to(runtime.device), store, dataset, s1["proto_temperature"],
                                             s1["train_thred"], device=runtime.device, train_mode=not s1["ema_eval"],
                                             batch_size=cfg["data"]["batch_size"], seed=cfg["seed"])
        rows.append({"artifact": name, **scores})
    for name, path, stage in (("hard labels, stage 1", hard_stage1, "stage2"),
                              ("hard labels, stage 2", hard_stage2, "stage3")):
        threshold = cfg[stage]["threshold"]
        rows.append({"artifact": f"{name} (> {threshold})",
                     **hard_label_quality(HardLabelStore(path), dataset, threshold)})
    write_quality_csv(rows, out_csv)
    plot_quality(out_csv, plot)


def figures(cfg: Mapping[str, Any], models: Mapping[str, PathLike], train_logs: Mapping[str, PathLike], *,
            grid: PathLike, curves: PathLike) -> None:
    """The report's pictures: target-val images with their labels and every stage's prediction,
    and every stage's training curves (losses and learning rate)."""
    from proda.report import plot_prediction_grid, plot_training_curves

    runtime = make_runtime(cfg)
    nets = {stage: build_model(path, allow_pickle=cfg["unsafe_pickle"])[0] for stage, path in models.items()}
    plot_prediction_grid(target_dataset(cfg, cfg["eval"]["split"]), nets, cfg["report"]["grid_images"], grid,
                         cfg["data"]["n_class"], device=runtime.device)
    plot_training_curves(train_logs, curves)


def study_report(summaries: Mapping[int, PathLike], *, out_dir: PathLike,
                 bounds: Mapping[str, Mapping[int, PathLike]] | None = None,
                 ablations: Mapping[str, tuple[str, Mapping[int, PathLike]]] | None = None,
                 quality: Mapping[int, PathLike] | None = None) -> None:
    """An experiment's evidence over seeds: ``seed_summary.csv`` (+ plot), ``bounds.csv``,
    ``ablations.csv`` and ``label_quality.csv`` (mean ± std over seeds), as configured.

    ``summaries``: seed -> that seed's summary.csv; ``bounds``: source_only/oracle -> seed -> eval CSV;
    ``ablations``: row label -> (stage it ablates, seed -> eval CSV); ``quality``: seed -> CSV."""
    import pandas as pd

    from proda.report import (plot_seed_summary, read_eval_csv, read_summary, read_table, write_ablations,
                              write_bounds, write_seed_summary)

    out = Path(out_dir)
    tables = {seed: read_summary(path) for seed, path in summaries.items()}
    summary = write_seed_summary(tables, out / "seed_summary.csv")
    plot_seed_summary(summary, out / "seed_summary.png")

    def mious(csvs: Mapping[int, PathLike]) -> dict[int, float]:
        return {seed: read_eval_csv(path)["mIoU"] for seed, path in csvs.items()}

    if bounds:
        oracle = mious(bounds["oracle"]) if "oracle" in bounds else None
        write_bounds(summary, mious(bounds["source_only"]), oracle, out / "bounds.csv")
    if ablations:
        full = {stage: [t.loc[stage, "mIoU"] for t in tables.values()] for stage in next(iter(tables.values())).index}
        rows = {label: (stage, list(mious(csvs).values())) for label, (stage, csvs) in ablations.items()}
        write_ablations(full, rows, out / "ablations.csv")
    if quality:
        per_seed = pd.concat([read_table(path, "label-quality table").assign(seed=seed)
                              for seed, path in quality.items()])
        stats = per_seed.drop(columns="seed").groupby("artifact", sort=False).agg(["mean", "std"])
        stats.columns = [f"{metric}_{stat}" for metric, stat in stats.columns]
        with atomic_path(out / "label_quality.csv") as tmp:
            stats.to_csv(tmp)


# ---------------------------------------------------------------------------- the rules' jobs
def _checked(inputs: Mapping[str, Any]) -> dict[str, str]:
    """A summary job's inputs, each checked against its record first (as every step's are)."""
    paths = {name: rule_input(path) for name, path in inputs.items()}
    for path in paths.values():
        if path:
            records.verify(path)
    return {name: path for name, path in paths.items() if path}


def _by_prefix(files: Mapping[str, str], prefix: str) -> dict[str, str]:
    return {name[len(prefix):]: path for name, path in files.items() if name.startswith(prefix)}


def run_figures(inputs: Mapping[str, str], view: Mapping[str, Any], *, run_config: Mapping[str, Any],
                grid: str, curves: str, log: str | None = None) -> None:
    """Rule figures: the run's models (``model_<stage>``) and logs (``log_<stage>``) to its pictures."""
    with logged_job(log):
        inputs = _checked(inputs)
        figures(job_config(view, execution_settings(run_config)), _by_prefix(inputs, "model_"),
                _by_prefix(inputs, "log_"), grid=grid, curves=curves)


def run_label_quality(inputs: Mapping[str, str], view: Mapping[str, Any], *, run_config: Mapping[str, Any],
                      out_csv: str, plot: str, log: str | None = None) -> None:
    """Rule label_quality: the run's pseudo-label artifacts against the target train labels."""
    with logged_job(log):
        inputs = _checked(inputs)
        label_quality(job_config(view, execution_settings(run_config)), warmup=inputs["warmup"],
                      stage1=inputs["stage1"], soft=inputs["soft"], prototypes=inputs["prototypes"],
                      hard_stage1=inputs["hard_stage1"], hard_stage2=inputs["hard_stage2"], out_csv=out_csv,
                      plot=plot)


def run_manifest(used: Mapping[str, Any], out: str, log: str | None = None) -> None:
    """Rule manifest: the run folders and artifacts one run uses."""
    with logged_job(log):
        write_manifest(used, out)


def run_report(evals: Mapping[str, str], *, summary: str, eval_dir: str, log: str | None = None) -> None:
    """Rule report: a run's evaluation CSVs (checked) to its summary table and plots."""
    with logged_job(log):
        experiment_report(_checked(evals), summary=summary, eval_dir=eval_dir)


def run_study_report(inputs: Mapping[str, str], outputs: Mapping[str, str], layout: Mapping[str, Any],
                     log: str | None = None) -> None:
    """Rule study_report: inputs named ``summary_<seed>``, ``quality_<seed>``, ``<bound>_<seed>`` and
    ``<ablation>_<seed>``; ``layout`` names the seeds, bounds and ablations (label, stage)."""

    def per_seed(prefix: str) -> dict[int, str]:
        return {int(seed): path for seed, path in _by_prefix(inputs, f"{prefix}_").items()}

    with logged_job(log):
        inputs = _checked(inputs)
        study_report(per_seed("summary"), out_dir=str(Path(outputs["summary"]).parent),
                     bounds={b: per_seed(b) for b in layout["bounds"]},
                     ablations={label: (stage, per_seed(name)) for name, (stage, label) in layout["ablations"].items()},
                     quality=per_seed("quality") if layout["quality"] else None)
