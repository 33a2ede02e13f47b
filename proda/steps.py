"""One function per pipeline step: files in, artifact out (the step registry, proda/registry.py,
names them). The workflow's jobs (proda/jobs.py) and the CLI call these.

Every step function takes the config (a resolved one, or a job's view plus its execution settings),
its input artifacts as keyword arguments named by their registry roles, and ``out`` (training steps
also ``state_dir``). Artifacts are written atomically, so an interrupted step never leaves a
half-written output behind.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch.utils.data import Dataset

from proda.config import step_view
from proda.models import build_model, save_checkpoint, unwrap
from proda.files import atomic_path, digest, file_sha256
from proda.train.loop import LOG_FILE, Stage, Trainer
from proda.train.optim import schedule_length
from proda.registry import TRAIN_LOG
from proda.runtime import Runtime, make_runtime, seed_everything
from proda.train.resume import job_fingerprint, prepare_state_dir
from proda.train.builders import source_dataset, stream, target_dataset, training_view

PathLike = str | os.PathLike


def _meta(cfg: Mapping[str, Any], step: str, **extra: Any) -> dict[str, Any]:
    """A checkpoint's own metadata: its stage, the digest of its view and the target image size it
    was trained for (``proda predict`` resizes images to it)."""
    return {"stage": step, "config_digest": digest(step_view(cfg, step), 16),
            "target_size": list(cfg["data"]["target"]["size"] or []), **extra}


# ---------------------------------------------------------------------------- data
def toycity(cfg: Mapping[str, Any], out: PathLike) -> dict[str, Path]:
    """Generate the toy-city benchmark (``data.toycity`` options) into the folder ``out``."""
    from proda.data.toycity import generate

    options = cfg["data"]["toycity"]
    if not options:
        raise ValueError("config key 'data.toycity' is empty: nothing to generate")
    return generate(out, **options)


def check_data(cfg: Mapping[str, Any], out: PathLike) -> list[dict]:
    """Every label of every split the run reads (source train, target train when label quality is
    reported, the target evaluation split): ids in the label table, size equal to its image's.
    Writes the report (YAML) to ``out``; the first bad label stops it with one line naming it."""
    import yaml

    from proda.data.checks import check_splits

    reads = [("source", "train", True), ("target", "train", bool(cfg["report"]["label_quality"])),
             ("target", cfg["eval"]["split"], True)]
    rows = check_splits(cfg["data"], reads, threads=torch.get_num_threads())
    with atomic_path(out) as tmp:
        tmp.write_text(yaml.safe_dump({"splits": rows}, sort_keys=False))
    for row in rows:
        print(f"{row['side']} {row['split']}: {row['images']} images, {row['labels_checked']} labels checked "
              f"in {row['seconds']} s", flush=True)
    return rows


# ---------------------------------------------------------------------------- training
@dataclass
class Job:
    """A constructed training stage with its data views, ready to run (or to benchmark)."""

    stage: Stage
    runtime: Runtime
    source_view: Dataset
    target_view: Dataset
    iterations: int

    def streams(self, cfg: Mapping[str, Any]):
        """The (source, target) batch streams of this job."""
        return (stream(self.source_view, cfg, self.runtime, seed=cfg["seed"]),
                stream(self.target_view, cfg, self.runtime, seed=cfg["seed"] + 1,
                       drop_last=cfg["data"]["drop_last"]))


def _validator(cfg: Mapping[str, Any], runtime: Runtime):
    """mIoU (percent) of a model on the target evaluation split, or None when validation is off."""
    if cfg["train"]["val_every"] <= 0:
        return None
    from proda.evaluate import evaluate_model

    val = target_dataset(cfg, cfg["eval"]["split"])

    def validate(model) -> float:
        table = evaluate_model(model, val, cfg["data"]["n_class"], batch_size=cfg["eval"]["batch_size"],
                               device=runtime.device, progress=False)
        return 100.0 * table.miou

    return validate


def run_job(job: Job, cfg: Mapping[str, Any], out: PathLike, state_dir: PathLike, step: str,
            inputs: Sequence[PathLike | None] = ()) -> None:
    """Train ``job`` with the shared loop and export its final model in the official layout, with
    its per-iteration log ``train.csv`` beside it. Resume state in ``state_dir`` is used only when
    the same config view and the same ``inputs`` files wrote it."""
    train, runtime = cfg["train"], job.runtime
    if runtime.is_main:
        prepare_state_dir(state_dir, job_fingerprint(step_view(cfg, step), inputs))
    runtime.barrier()
    source, target = job.streams(cfg)
    trainer = Trainer(job.stage, source, target, iterations=job.iterations, state_dir=state_dir,
                      schedule_iters=schedule_length(job.iterations, train["train_iters"], bool(cfg["parity"])),
                      poly_power=train["poly_power"], checkpoint_every=train["checkpoint_every"],
                      log_every=train["log_every"], validate=_validator(cfg, runtime),
                      val_every=train["val_every"], select=train["select"],
                      max_nonfinite_skips=train["max_nonfinite_skips"])
    trainer.run()
    if runtime.is_main:
        model = unwrap(job.stage.student)
        model.load_state_dict(trainer.final_student_state())
        save_checkpoint(out, model, prototypes=job.stage.prototypes(), iteration=trainer.iteration,
                        best_iou=max(trainer.best_iou, 0.0), meta=_meta(cfg, step),
                        extra=job.stage.export_extra())
        with atomic_path(Path(out).with_name(TRAIN_LOG)) as tmp:
            shutil.copyfile(Path(state_dir) / LOG_FILE, tmp)
        trainer.discard_state()
    runtime.barrier()


def build_warmup(cfg: Mapping[str, Any]) -> Job:
    """The warm-up stage: source crops and weak target crops."""
    from proda.train.warmup import WarmupStage

    seed_everything(cfg["seed"])
    runtime = make_runtime(cfg)
    return Job(WarmupStage(cfg, runtime), runtime, training_view(source_dataset(cfg), cfg, seed=cfg["seed"]),
               training_view(target_dataset(cfg, labels=False), cfg, seed=cfg["seed"] + 1),
               cfg["warmup"]["iterations"])


def build_stage1(cfg: Mapping[str, Any], warmup_ckpt: PathLike, soft_h5: PathLike,
                 prototypes_h5: PathLike) -> Job:
    """Stage 1: weak/strong/full target views with the soft pseudo labels."""
    from proda.prototypes import load_prototypes
    from proda.pseudo_labels import SoftLabelStore
    from proda.train.stage1 import Stage1

    seed_everything(cfg["seed"])
    runtime = make_runtime(cfg)
    soft = SoftLabelStore(soft_h5)
    if soft.n_class != cfg["data"]["n_class"]:
        raise ValueError(f"{soft_h5} holds {soft.n_class} classes, config key 'data.n_class' is "
                         f"{cfg['data']['n_class']}")
    target = target_dataset(cfg, labels=False)
    soft.check_names(_names(target))
    prototypes_, _, _ = load_prototypes(prototypes_h5)
    stage = Stage1(cfg, runtime, str(warmup_ckpt), prototypes_)
    target_view = training_view(target, cfg, seed=cfg["seed"] + 1, strong=True,
                                full_image=cfg["stage1"]["teacher_input"] == "full", soft_labels=soft)
    return Job(stage, runtime, training_view(source_dataset(cfg), cfg, seed=cfg["seed"]), target_view,
               cfg["stage1"]["iterations"])


def build_distill(cfg: Mapping[str, Any], stage: str, teacher_ckpt: PathLike, hard_h5: PathLike,
                  init_ckpt: PathLike | None = None) -> Job:
    """Stage 2 or 3: weak/strong target views with thresholded hard pseudo labels."""
    from proda.pseudo_labels import HardLabelStore
    from proda.train.distill import DistillStage

    if stage not in ("stage2", "stage3"):
        raise ValueError(f"distill stage must be 'stage2' or 'stage3', got {stage!r}")
    seed_everything(cfg["seed"])
    runtime = make_runtime(cfg)
    # the store applies the stage's threshold to every label it serves (and refuses one it cannot)
    hard, target = HardLabelStore(hard_h5, threshold=float(cfg[stage]["threshold"])), target_dataset(cfg, labels=False)
    hard.check_names(_names(target))
    job = DistillStage(cfg, runtime, stage, str(teacher_ckpt), None if init_ckpt is None else str(init_ckpt))
    target_view = training_view(target, cfg, seed=cfg["seed"] + 1, strong=True, hard_labels=hard)
    return Job(job, runtime, training_view(source_dataset(cfg), cfg, seed=cfg["seed"]), target_view,
               cfg[stage]["iterations"])


def _names(dataset) -> list[str]:
    """The image names of a dataset (what its pseudo-label stores must hold)."""
    return [sample.name for sample in dataset.samples]


def warmup(cfg: Mapping[str, Any], out: PathLike, state_dir: PathLike) -> None:
    """Train the warm-up model, or import ``warmup.checkpoint`` (e.g. the released one) as is."""
    given = cfg["warmup"]["checkpoint"]
    if given:
        model, ckpt = build_model(given, allow_pickle=cfg["unsafe_pickle"])  # one-line error on a bad file
        if model.num_classes != cfg["data"]["n_class"]:
            raise ValueError(f"config key 'warmup.checkpoint': {given} has {model.num_classes} classes, "
                             f"data.n_class is {cfg['data']['n_class']}")
        # re-saved in the official layout with plain values, so later steps load it safely
        save_checkpoint(out, model, iteration=int(ckpt.get("iter", 0)),
                        best_iou=float(ckpt.get("best_iou", 0.0)), meta=_meta(cfg, "warmup", imported=str(given)))
        with atomic_path(Path(out).with_name(TRAIN_LOG)) as tmp:
            tmp.write_text("iteration\n")  # imported, not trained: an empty log
        return
    run_job(build_warmup(cfg), cfg, out, state_dir, "warmup", [cfg["model"]["imagenet"]])


def stage1(cfg: Mapping[str, Any], warmup: PathLike, soft: PathLike, prototypes: PathLike,
           out: PathLike, state_dir: PathLike) -> None:
    """Prototype-rectified self-training from the warm-up model ``warmup`` with its soft labels and
    prototypes (docs/method.md §4.2)."""
    run_job(build_stage1(cfg, warmup, soft, prototypes), cfg, out, state_dir, "stage1", [warmup, soft, prototypes])


def distill(cfg: Mapping[str, Any], stage: str, teacher: PathLike, labels: PathLike,
            out: PathLike, state_dir: PathLike, init: PathLike | None = None) -> None:
    """Stage 2 or 3: self-training on the hard pseudo labels ``labels`` of ``teacher`` with
    distillation (docs/method.md §4.3); ``init``: the warm-up model (student_init warmup_backbone)."""
    weights = cfg["model"].get(cfg[stage]["student_init"])
    run_job(build_distill(cfg, stage, teacher, labels, init), cfg, out, state_dir, stage,
            [teacher, labels, init, weights])


def stage2(cfg: Mapping[str, Any], teacher: PathLike, labels: PathLike, out: PathLike, state_dir: PathLike,
           init: PathLike | None = None) -> None:
    """Stage 2: :func:`distill` from the stage-1 teacher."""
    distill(cfg, "stage2", teacher, labels, out, state_dir, init)


def stage3(cfg: Mapping[str, Any], teacher: PathLike, labels: PathLike, out: PathLike, state_dir: PathLike,
           init: PathLike | None = None) -> None:
    """Stage 3: :func:`distill` from the stage-2 teacher."""
    distill(cfg, "stage3", teacher, labels, out, state_dir, init)


# ---------------------------------------------------------------------------- inference
def _inference_setup(cfg: Mapping[str, Any], checkpoint: PathLike):
    runtime = make_runtime(cfg)
    model, _ = build_model(checkpoint, allow_pickle=cfg["unsafe_pickle"])
    if model.num_classes != cfg["data"]["n_class"]:
        raise ValueError(f"{checkpoint} has {model.num_classes} classes, config key 'data.n_class' is "
                         f"{cfg['data']['n_class']}")
    return runtime, runtime.place(model).eval()


def soft_labels(cfg: Mapping[str, Any], checkpoint: PathLike, out: PathLike) -> None:
    """Soft pseudo labels of the target train split (docs/method.md §6.1)."""
    from proda.pseudo_labels import generate_soft

    runtime, model = _inference_setup(cfg, checkpoint)
    with runtime.autocast():
        generate_soft(model, target_dataset(cfg, labels=False), out, n_class=cfg["data"]["n_class"],
                      batch_size=cfg["data"]["batch_size"], device=runtime.device,
                      num_workers=cfg["data"]["num_workers"], soft_dtype="float32" if cfg["parity"] else "float16",
                      attrs={"checkpoint_sha256": file_sha256(checkpoint)})


def prototypes(cfg: Mapping[str, Any], checkpoint: PathLike, out: PathLike) -> None:
    """Initial class prototypes from the warm-up model's features (docs/method.md §6.3)."""
    from torch.utils.data import DataLoader

    from proda.prototypes import compute_prototypes, save_prototypes

    runtime, model = _inference_setup(cfg, checkpoint)
    p = cfg["prototypes"]
    on_source = p["domain"] == "source"
    dataset = source_dataset(cfg) if on_source else target_dataset(cfg, labels=False)
    # drop_last as the official command (docs/method.md §6.3), unless that would leave nothing
    drop_last = len(dataset) >= cfg["data"]["batch_size"]
    loader = DataLoader(dataset, batch_size=cfg["data"]["batch_size"], shuffle=False, drop_last=drop_last,
                        num_workers=cfg["data"]["num_workers"])
    passes = prototype_passes(p["passes"], bool(cfg["parity"]))
    with runtime.autocast():
        protos, counts = compute_prototypes(model, loader, cfg["data"]["n_class"], passes=passes,
                                            parity=bool(cfg["parity"]), source=on_source,
                                            device=runtime.device, min_pixels=p["min_pixels"], cap=p["cap"])
    save_prototypes(out, protos, counts, {"checkpoint_sha256": file_sha256(checkpoint),
                                             "passes": passes, "domain": p["domain"]})


def prototype_passes(passes: int, parity: bool) -> int:
    """Passes over the data for the initial prototypes: the official 4 in parity (with the cap, Q11)."""
    return 4 if parity else passes


def hard_labels(cfg: Mapping[str, Any], checkpoint: PathLike, out: PathLike,
                png_dir: PathLike | None = None) -> None:
    """Hard pseudo labels with flip TTA over the target train split (docs/method.md §6.2)."""
    from proda.pseudo_labels import generate_hard

    runtime, model = _inference_setup(cfg, checkpoint)
    h = cfg["hard_labels"]
    if png_dir is None and h["save_png"]:
        png_dir = Path(out).with_suffix("")
    with runtime.autocast():
        generate_hard(model, target_dataset(cfg, labels=False), out, n_class=cfg["data"]["n_class"],
                      flip=h["flip"], batch_size=cfg["data"]["batch_size"], device=runtime.device,
                      png_dir=png_dir, attrs={"checkpoint_sha256": file_sha256(checkpoint)})


def evaluate(cfg: Mapping[str, Any], checkpoint: PathLike, out: PathLike, split: str | None = None,
             save_dir: PathLike | None = None):
    """Per-class IoU of ``checkpoint`` on the target evaluation split (``eval.split``), as a CSV."""
    from proda.evaluate import evaluate_model, write_eval_csv

    runtime, model = _inference_setup(cfg, checkpoint)
    with runtime.autocast():
        table = evaluate_model(model, target_dataset(cfg, split or cfg["eval"]["split"]), cfg["data"]["n_class"],
                               batch_size=cfg["eval"]["batch_size"], device=runtime.device,
                               num_workers=cfg["data"]["num_workers"], save_dir=save_dir)
    write_eval_csv(table, out, cfg["data"]["n_class"])
    return table


def evaluate_folder(checkpoint: PathLike, *, root: PathLike, kind: str = "cityscapes", split: str = "val",
                    size: Sequence[int] | None = None, device: str = "auto", out_csv: PathLike | None = None,
                    save_dir: PathLike | None = None, allow_pickle: bool = False):
    """The official test.py: ``checkpoint`` on a dataset folder with the checkpoint's classes."""
    from proda.evaluate import evaluate_checkpoint

    return evaluate_checkpoint(checkpoint, dataset_kind=kind, root=root, split=split, size=size, device=device,
                               out_csv=out_csv, save_dir=save_dir, allow_pickle=allow_pickle)


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
