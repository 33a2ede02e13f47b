"""The registered steps (proda/registry.py): how one runs, and one function per step.

Running a step (:func:`run_step`; a Snakemake rule's job comes through :func:`run_rule`, the CLI
calls it directly): the step's inputs are checked against their provenance records, its artifact's
lock is held (two runs that share a results directory never write one folder at once), its function
is called in this process (under torchrun only when a training job has several GPUs) and the
artifact's record is written. Nothing here merges or validates the config: the Snakefile or the
CLI did that once.

Every step function takes the config (a resolved one, or a job's view plus its execution settings),
its input artifacts as keyword arguments named by their registry roles, and ``out`` (training steps
also ``state_dir``). Artifacts are written atomically, so an interrupted step never leaves a
half-written output behind.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch.utils.data import Dataset

import proda
from proda import records
from proda.config import ConfigError, execution_settings, job_config, step_view
from proda.files import atomic_path, digest, file_sha256, job_lock
from proda.logs import logged_job
from proda.models import build_model, save_checkpoint, unwrap
from proda.registry import TRAIN_LOG, Step, step
from proda.runtime import Runtime, make_runtime, seed_everything
from proda.train.builders import source_dataset, stream, target_dataset, training_view
from proda.train.loop import LOG_FILE, Stage, Trainer
from proda.train.optim import schedule_length
from proda.train.resume import job_fingerprint, prepare_state_dir

REPO = Path(proda.__file__).resolve().parents[1]
PathLike = str | os.PathLike


# ---------------------------------------------------------------------------- running a step
def node_of(spec: Step, out: PathLike) -> Path:
    """The artifact a step's ``out`` belongs to: a model's folder, a file without its suffix, a folder."""
    out = Path(out)
    if spec.trains:
        return out.parent
    return out if spec.output == "folder" else out.with_suffix("")


def record_of(spec: Step, out: PathLike) -> Path:
    """Where the record of the artifact written to ``out`` goes."""
    node = node_of(spec, out)
    return node / records.RECORD if spec.trains else node.parent / f"{node.name}.{records.RECORD}"


def torchrun_command(argv: list[str], gpus: int) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node=<gpus> -m proda.cli <argv>``:
    one DistributedDataParallel process per GPU of this node."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
            "-m", "proda.cli", *argv]


def run_step(name: str, cfg: Mapping[str, Any], *, out: PathLike, inputs: Mapping[str, PathLike | None],
             state_dir: PathLike | None = None, threads: int = 0, gpus: int = 0,
             view: Mapping[str, Any] | None = None, options: Mapping[str, Any] | None = None) -> Any:
    """Run the registered step ``name`` on ``cfg`` and write ``out`` and its record.

    ``inputs``: role -> path; the step's function receives the roles it consumes, every input is
    checked against its record first (a damaged one stops the job in one line). ``view`` (default:
    the step's view of ``cfg``) is what the record says made the artifact; ``options``: extra keyword
    arguments of the function that change no artifact (e.g. ``png_dir``). Returns what it returns."""
    spec = step(name)
    given = {role: str(path) for role, path in inputs.items() if path}
    missing = [role for role in spec.consumes if role not in given and role not in spec.optional]
    if missing:
        raise ConfigError(f"step {name} needs the input(s) {', '.join(missing)}")
    checked = {role: records.verify(path) for role, path in given.items()}
    if threads:
        torch.set_num_threads(max(1, int(threads)))
    main = int(os.environ.get("RANK", "0")) == 0  # under `torchrun -m proda.cli`, rank 0 locks and records
    with job_lock(node_of(spec, out)) if main else nullcontext():
        kwargs: dict[str, Any] = {role: given.get(role) for role in spec.consumes}
        if spec.trains:
            kwargs["state_dir"] = str(state_dir or Path(out).parent / "state")
        if spec.trains and gpus > 1:
            result = _torchrun(spec, cfg, out, kwargs, gpus, threads)
        else:
            result = spec.function(cfg, out=str(out), **kwargs, **(options or {}))
        if main:
            records.write(name, _written(spec, out), view if view is not None else step_view(cfg, name), checked,
                          record_of(spec, out))
    return result


def _written(spec: Step, out: PathLike) -> dict[str, PathLike]:
    """The files a step wrote for ``out`` (a training step: its model and its log)."""
    return {"model": out, "log": Path(out).with_name(TRAIN_LOG)} if spec.trains else {"out": out}


def _torchrun(spec: Step, cfg: Mapping[str, Any], out: PathLike, kwargs: Mapping[str, Any], gpus: int,
              threads: int) -> None:
    """The step's function in ``gpus`` DistributedDataParallel processes (``proda <step> --config-json``)."""
    with tempfile.TemporaryDirectory(prefix="proda-") as tmp:
        cfg_json = Path(tmp) / "config.json"
        cfg_json.write_text(json.dumps(dict(cfg), indent=1))
        argv = [spec.command, "--config-json", str(cfg_json), "--out", str(out),
                "--threads", str(max(1, int(threads) // gpus))]
        for role, path in kwargs.items():
            if path is not None:
                argv += [f"--{role.replace('_', '-')}", str(path)]
        command = torchrun_command(argv, gpus)
        print("launching:", " ".join(command), flush=True)
        pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        status = subprocess.run(command, env=dict(os.environ, PYTHONPATH=pythonpath)).returncode
    if status:
        raise SystemExit(status)


def run_rule(name: str, view: Mapping[str, Any], *, run_config: Mapping[str, Any], inputs: Mapping[str, Any],
             out: str, log: str | None = None, threads: int = 1, gpus: int = 0) -> None:
    """A Snakemake job of the step ``name``: its view (the rule's params) plus the run's execution
    settings, the rule's named inputs and its main output."""
    with logged_job(log, step(name).command):
        run_step(name, job_config(view, execution_settings(run_config)), out=out, view=view,
                 inputs={role: rule_input(path) for role, path in inputs.items()}, threads=threads, gpus=gpus)


def rule_input(value: Any) -> str | None:
    """A Snakemake named input: a path, or an empty list for an absent optional one."""
    if isinstance(value, (list, tuple)):
        return str(value[0]) if value else None
    return str(value) if value else None


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
def _meta(cfg: Mapping[str, Any], step: str, **extra: Any) -> dict[str, Any]:
    """A checkpoint's own metadata: its stage, the digest of its view and the target image size it
    was trained for (``proda predict`` resizes images to it)."""
    return {"stage": step, "config_digest": digest(step_view(cfg, step), 16),
            "target_size": list(cfg["data"]["target"]["size"] or []), **extra}


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

    def val_miou(model) -> float:
        table = evaluate_model(model, val, cfg["data"]["n_class"], batch_size=cfg["eval"]["batch_size"],
                               device=runtime.device, progress=False)
        return 100.0 * table.miou

    return val_miou


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
