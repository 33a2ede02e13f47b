"""Shared by every rule: the validated config, the plan of every artifact (proda/plan.py) and the
input, params and resource functions. Defines no rules.

Every artifact's path carries its provenance (results_dir/runs/warmup-<h>/stage1-<h>/...), so the
rules are generic: a rule's output pattern has one wildcard `node` (the artifact's folder, or its
file path without the suffix) and its inputs and config view come from the plan, by node.
"""

import re
import sys

sys.path.insert(0, workflow.basedir)  # `proda` importable without installing it

from snakemake.exceptions import WorkflowError

from proda.config import (
    ConfigError,
    deep_merge,
    effective,
    load_defaults,
    validate,
    without_execution,
)
from proda.plan import ABLATIONS, DIGEST, study, toycity_folder


def _validated(user: dict) -> dict:
    """Defaults <- the user's config, checked by the same function as the CLI (one line on error)."""
    cfg = deep_merge(load_defaults(), user)
    try:
        validate(cfg)
    except ConfigError as err:
        raise WorkflowError(f"Invalid configuration: {err}") from None
    return effective(cfg)


CONFIG = _validated(config)
# workers read the execution-only settings (device, workers, logging) from it
config.update(CONFIG)
STUDY = study(CONFIG)
PLANS = STUDY.plans
REPORTS = STUDY.reports()  # run folder -> plan, for each seed's full chain
ARTIFACTS = {node: art for p in PLANS.values() for node, art in p.artifacts.items()}
TOY = CONFIG["data"]["toycity"] is not None
QUALITY = bool(CONFIG["report"]["label_quality"])
DATA = (
    {"data": toycity_folder(CONFIG)} if TOY else {}
)  # the generated benchmark, an input of data readers


def node_pattern(name: str) -> str:
    """Regex of the nodes of one step: any folder, then `<name>-<digest>`."""
    return rf".+/{name}-{DIGEST}"


def folders_pattern(folders) -> str:
    """Regex matching exactly the given folders."""
    return "|".join(map(re.escape, folders))


def inputs_of(wildcards) -> dict:
    """The job's input files, named as the worker expects them (from the plan)."""
    return ARTIFACTS[wildcards.node].inputs


def view_of(wildcards) -> dict:
    """The config view that determines the job's output (its params; also its folder's digest)."""
    return ARTIFACTS[wildcards.node].view


def step_of(wildcards) -> str:
    """The workflow step of a generic rule's job (stage2 or stage3 for the distill rule)."""
    return ARTIFACTS[wildcards.node].step


def evals_of(wildcards) -> dict:
    """The report's inputs: each stage's evaluation CSV of the run."""
    return REPORTS[wildcards.folder].evals


def manifest_of(wildcards) -> dict:
    return REPORTS[wildcards.folder].manifest()


def run_config_of(wildcards) -> dict:
    """The run's whole config (for the jobs that read several sections), execution keys left out."""
    return without_execution(REPORTS[wildcards.folder].config)


def quality_inputs(wildcards) -> dict:
    """The pseudo-label artifacts of the run and the models that made them."""
    p = REPORTS[wildcards.folder]
    models = {s: f"{p.models[s]}/model.pt" for s in ("warmup", "stage1")}
    return {**models, **p.pseudo, **DATA}


def figure_inputs(wildcards) -> dict:
    """Every stage's model and training log of the run."""
    p = REPORTS[wildcards.folder]
    models = {f"model_{s}": f"{folder}/model.pt" for s, folder in p.models.items()}
    logs = {f"log_{s}": path for s, path in p.train_logs.items()}
    return {**models, **logs, **DATA}


def study_inputs(wildcards) -> dict:
    """Each seed's summary (and label quality), the bounds' and the ablations' evaluations."""
    files = {}
    for seed, name in STUDY.main.items():
        files[f"summary_{seed}"] = f"{PLANS[name].folder}/report/summary.csv"
        if QUALITY:
            files[f"quality_{seed}"] = f"{PLANS[name].folder}/label_quality.csv"
    for bound, runs in STUDY.bounds.items():
        files.update(
            {
                f"{bound}_{seed}": PLANS[name].evals["warmup"]
                for seed, name in runs.items()
            }
        )
    for ablation, runs in STUDY.ablations.items():
        stage = ABLATIONS[ablation][0]
        files.update(
            {
                f"{ablation}_{seed}": PLANS[name].evals[stage]
                for seed, name in runs.items()
            }
        )
    return files


def study_outputs() -> dict:
    """The study report's files (bounds, ablations and label quality only when configured)."""
    names = {"summary": "seed_summary.csv", "plot": "seed_summary.png"}
    names |= {"bounds": "bounds.csv"} if STUDY.bounds else {}
    names |= {"ablations": "ablations.csv"} if STUDY.ablations else {}
    names |= {"quality": "label_quality.csv"} if QUALITY else {}
    return {key: f"{STUDY.folder}/study/{name}" for key, name in names.items()}


def study_report_outputs() -> dict:
    """:func:`study_outputs` marked for the HTML report, each with its caption."""
    return {
        key: report(path, category="Study", caption=f"../report/study_{key}.rst")
        for key, path in study_outputs().items()
    }


def study_layout() -> dict:
    """How the study report reads its inputs: names of the bounds and the ablations' rows."""
    return {
        "seeds": list(STUDY.main),
        "bounds": list(STUDY.bounds),
        "ablations": {a: list(ABLATIONS[a][::2]) for a in STUDY.ablations},
        "quality": QUALITY,
    }


def final_targets() -> list:
    """What `all` asks for: every run's report and artifacts (a deleted one is rebuilt), the
    pictures and label quality of each seed's run, and the study report."""
    files = []
    for folder, p in REPORTS.items():
        files += [
            f"{folder}/report/summary.csv",
            f"{folder}/report/prediction_grid.png",
            *p.targets(),
        ]
        files += [f"{folder}/label_quality.csv"] if QUALITY else []
    for name, p in PLANS.items():
        files += list(p.evals.values())
    return files + (list(study_outputs().values()) if STUDY.aggregated else [])


# ---- resources ----
# GPUs per model job: none on CPU; `auto` asks for one except on the toy benchmark (a CPU demo).
# For multi-GPU training raise `gpu` of a training rule (slurm/config.yaml set-resources, or
# --set-resources stage1:gpu=4): its worker then launches torchrun with one process per GPU.
GPUS = {"cpu": 0, "cuda": 1, "auto": 0 if TOY else 1}[CONFIG["device"]]
# (threads, mem_mb, runtime in minutes) of paper-scale runs (one GPU, 2048x1024 images).
_FULL = {
    "toycity": (1, 4000, 60),
    "warmup": (8, 64000, 4320),
    "soft_labels": (8, 32000, 360),
    "prototypes": (8, 32000, 360),
    "stage1": (8, 64000, 4320),
    "hard_labels": (8, 32000, 360),
    "distill": (8, 64000, 4320),
    "evaluate": (8, 32000, 120),
    "report": (1, 2000, 10),
}
# The toy benchmark: training on two cores, inference single-threaded (runs side by side).
_TOY = {
    step: (2 if step in ("warmup", "stage1", "distill") else 1, 4000, 60)
    for step in _FULL
}
_TOY["report"] = (1, 2000, 10)
_TIERS = _TOY if TOY else _FULL


def threads_of(rule: str) -> int:
    return _TIERS[rule][0]


def resources_of(rule: str) -> dict:
    """mem_mb, runtime (minutes) and gpu of a rule; the site profile may override any of them."""
    _, mem_mb, runtime = _TIERS[rule]
    return {
        "mem_mb": mem_mb,
        "runtime": runtime,
        "gpu": 0 if rule in ("toycity", "report") else GPUS,
    }


def print_summaries() -> None:
    """After a successful run: each run's mIoU per stage, the study's mean and std over seeds,
    and where the report is."""
    import os

    from proda.report import format_seed_summary, format_summary

    for folder in REPORTS:
        summary = f"{folder}/report/summary.csv"
        if os.path.exists(summary):
            print(f"Run {folder}:")
            print(format_summary(summary))
    seeds = study_outputs()["summary"]
    if STUDY.aggregated and os.path.exists(seeds):
        print(f"Experiment {STUDY.folder}, mean ± std over seeds:")
        print(format_seed_summary(seeds))
    print(
        f"Report: {STUDY.folder}/ (tables and plots); HTML: snakemake --report {STUDY.folder}/report.html"
    )
